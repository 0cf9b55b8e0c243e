#!/usr/bin/env bash
# Runs the test suite, installing whatever is missing first (redis-server,
# PostgreSQL 15, the test extras). Extra arguments go to pytest.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo_root/scripts/setup.sh" test
cd "$repo_root"

# Debian keeps the PostgreSQL binaries off PATH.
if ! command -v initdb >/dev/null 2>&1 && [[ -d /usr/lib/postgresql/15/bin ]]; then
  export PATH="/usr/lib/postgresql/15/bin:$PATH"
fi

status=0
"$repo_root/.venv/bin/python" -m pytest -q "$@" || status=$?
if (( status == 5 )); then
  echo "test: pytest collected no tests; that counts as a failure" >&2
  exit 1
fi
exit "$status"
