#!/usr/bin/env bash
# Runs the gateway on its defaults (embedded redis, mock provider, port 8080),
# installing whatever is missing first. Extra arguments go to `smartflow serve`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo_root/scripts/setup.sh" run
cd "$repo_root"
echo "run: starting smartflow serve $*" >&2
exec "$repo_root/.venv/bin/smartflow" serve "$@"
