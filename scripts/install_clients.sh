#!/usr/bin/env bash
# Installs the real, unchanged clients that tests/test_clients_e2e.py drives
# through the gateway; safe to run again.
#
#   scripts/install_clients.sh            installs all, prints "<name> <path>" per line
#   scripts/install_clients.sh NAME       installs what NAME needs, prints its path only
#
# NAME is one of:
#   codex    the Codex CLI binary         (npm @openai/codex)
#   gemini   the Gemini CLI binary        (npm @google/gemini-cli)
#   python   the clients venv's python    (PyPI openai-agents, langchain-openai, llm)
#   llm      the `llm` CLI of that venv
#
# Everything goes to .cache/clients, which .gitignore keeps out of every
# commit: node packages under .cache/clients/npm, and the Python clients in
# their own venv .cache/clients/venv, so their dependencies never touch the
# project's .venv. Versions are pinned (the request shapes the tests expect
# were observed with them; @google/gemini-cli 0.61.0 needs Node >= 20).
# Nothing is fetched when the pinned versions are already there and run.
set -euo pipefail

codex_version="0.171.0"
gemini_version="0.61.0"
# Top-level pins, plus the openai SDK that shapes what the Python clients send.
python_pins=(
  "openai-agents==0.24.0"
  "langchain-openai==1.8.1"
  "llm==0.36"
  "openai==3.63.0"
)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo_root/.cache/clients"
npm_prefix="$cache/npm"
venv="$cache/venv"
codex_bin="$npm_prefix/node_modules/.bin/codex"
gemini_bin="$npm_prefix/node_modules/.bin/gemini"
venv_python="$venv/bin/python"
llm_bin="$venv/bin/llm"
stamp="$venv/.install-clients-stamp"

say() { printf 'install_clients: %s\n' "$*" >&2; }
die() { printf 'install_clients: error: %s\n' "$*" >&2; exit 1; }

want="${1:-all}"
case "$want" in
  all|codex|gemini|python|llm) ;;
  *) die "usage: scripts/install_clients.sh [codex|gemini|python|llm]" ;;
esac

# -- npm: Codex CLI and Gemini CLI ---------------------------------------------------

npm_version_of() {  # the version of an installed package, or nothing
  local package_json="$npm_prefix/node_modules/$1/package.json"
  [[ -f "$package_json" ]] || return 0
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' \
    "$package_json" 2>/dev/null || true
}

# "Present" means the binary answers --version with the pinned version (an
# interrupted install can leave a package without its platform binary).
# A throwaway HOME: neither CLI may touch the user's ~/.codex or ~/.gemini.
answers_version() {
  local bin="$1" version="$2" reported scratch_home status=0
  [[ -x "$bin" ]] || return 1
  scratch_home="$(mktemp -d)"
  reported="$(HOME="$scratch_home" CODEX_HOME="$scratch_home/.codex" \
    GEMINI_CLI_NO_RELAUNCH=true NO_UPDATE_NOTIFIER=1 \
    "$bin" --version </dev/null 2>/dev/null)" || status=1
  rm -rf "$scratch_home"
  (( status == 0 )) && [[ "$reported" == *"$version"* ]]
}

npm_ready() {
  [[ "$(npm_version_of @openai/codex)" == "$codex_version" ]] \
    && [[ "$(npm_version_of @google/gemini-cli)" == "$gemini_version" ]] \
    && answers_version "$codex_bin" "$codex_version" \
    && answers_version "$gemini_bin" "$gemini_version"
}

install_npm() {
  npm_ready && return 0
  command -v node >/dev/null 2>&1 || die "node not found; install Node.js 20+ (Debian: apt-get install nodejs npm)"
  command -v npm >/dev/null 2>&1 || die "npm not found; install npm (Debian: apt-get install npm)"
  say "installing @openai/codex@$codex_version and @google/gemini-cli@$gemini_version into ${npm_prefix#"$repo_root"/}"
  mkdir -p "$npm_prefix"
  # Start from an empty node_modules (it is only ours): a half-installed
  # copy at the right version would otherwise be kept as it is.
  rm -rf "$npm_prefix/node_modules"
  # cwd is the prefix, so npm never touches a package.json of the repo itself.
  (cd "$npm_prefix" && npm install --prefix "$npm_prefix" --no-audit --no-fund \
    --loglevel=error --save-exact --ignore-scripts=false \
    "@openai/codex@$codex_version" "@google/gemini-cli@$gemini_version" >&2) \
    || die "npm install @openai/codex@$codex_version @google/gemini-cli@$gemini_version failed"
  answers_version "$codex_bin" "$codex_version" \
    || die "installed @openai/codex@$codex_version, but $codex_bin --version does not answer it"
  answers_version "$gemini_bin" "$gemini_version" \
    || die "installed @google/gemini-cli@$gemini_version, but $gemini_bin --version does not answer it"
}

# -- PyPI: openai-agents, langchain-openai, llm in their own venv ----------------------

python_ready() {
  [[ -x "$venv_python" && -x "$llm_bin" && -f "$stamp" ]] || return 1
  [[ "$(cat "$stamp")" == "${python_pins[*]}" ]] || return 1
  "$venv_python" -c 'import agents, langchain_openai, llm' >/dev/null 2>&1
}

install_python() {
  python_ready && return 0
  command -v python3 >/dev/null 2>&1 || die "python3 not found"
  say "installing ${python_pins[*]} into ${venv#"$repo_root"/}"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  # (grep drops pip's notes about local index folders this machine may lack;
  # pipefail keeps pip's own exit status)
  if ! "$venv_python" -m pip install --quiet --disable-pip-version-check --no-input \
      "${python_pins[@]}" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; then
    die "pip install ${python_pins[*]} failed"
  fi
  "$venv_python" -c 'import agents, langchain_openai, llm' \
    || die "installed ${python_pins[*]}, but they do not import"
  printf '%s' "${python_pins[*]}" >"$stamp"
}

case "$want" in
  codex)  install_npm; printf '%s\n' "$codex_bin" ;;
  gemini) install_npm; printf '%s\n' "$gemini_bin" ;;
  python) install_python; printf '%s\n' "$venv_python" ;;
  llm)    install_python; printf '%s\n' "$llm_bin" ;;
  all)
    install_npm
    install_python
    printf 'codex %s\ngemini %s\npython %s\nllm %s\n' \
      "$codex_bin" "$gemini_bin" "$venv_python" "$llm_bin"
    ;;
esac
