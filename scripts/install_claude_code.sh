#!/usr/bin/env bash
# Installs the Claude Code CLI that tests/test_claude_code.py drives; safe to run again.
#
#   scripts/install_claude_code.sh     prints the path of the `claude` binary
#
# The package (about 235 MB) goes to .cache/claude-code, which .gitignore
# keeps out of every commit. 2.1.197 is pinned: it is the newest release
# whose `engines` admits Node 20, and the request shapes the tests compare
# against were observed with it (docs/claude-code.md). Nothing is fetched
# when that version is already there and runs.
set -euo pipefail

version="2.1.197"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$repo_root/.cache/claude-code"
claude_bin="$prefix/node_modules/.bin/claude"
package_json="$prefix/node_modules/@anthropic-ai/claude-code/package.json"

say() { printf 'install_claude_code: %s\n' "$*" >&2; }
die() { printf 'install_claude_code: error: %s\n' "$*" >&2; exit 1; }

installed_version() {
  [[ -f "$package_json" ]] || return 0
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' \
    "$package_json" 2>/dev/null || true
}

# The npm package is a stub whose postinstall puts the native binary in
# place: "present" means that binary answers --version, not just that the
# directory exists (an interrupted install leaves the stub behind).
runs() {
  [[ -x "$claude_bin" ]] || return 1
  local reported scratch_home status=0
  # A throwaway HOME: the CLI must not touch the user's ~/.claude here.
  scratch_home="$(mktemp -d)"
  reported="$(HOME="$scratch_home" DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 "$claude_bin" --version </dev/null 2>/dev/null)" \
    || status=1
  rm -rf "$scratch_home"
  (( status == 0 )) && [[ "$reported" == "$version"* ]]
}

command -v node >/dev/null 2>&1 || die "node not found; install Node.js 18+ (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found; install npm (Debian: apt-get install npm)"

if [[ "$(installed_version)" == "$version" ]] && runs; then
  printf '%s\n' "$claude_bin"
  exit 0
fi

say "installing @anthropic-ai/claude-code@$version into ${prefix#"$repo_root"/}"
mkdir -p "$prefix"
# A half-installed copy at the right version would make npm skip the
# postinstall again: start from an empty node_modules (it is only ours).
rm -rf "$prefix/node_modules"
# cwd is the prefix so npm never touches a package.json of the repo itself;
# --ignore-scripts=false because the postinstall is what places the binary.
(cd "$prefix" && npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
  --ignore-scripts=false --save-exact "@anthropic-ai/claude-code@$version" >&2) \
  || die "npm install @anthropic-ai/claude-code@$version failed"

runs || die "installed @anthropic-ai/claude-code@$version, but $claude_bin --version does not answer $version"
printf '%s\n' "$claude_bin"
