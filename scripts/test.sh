#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (virtual environment,
# Debian's orthanc and dcmtk), then lint, type-check and the tests.
#   scripts/test.sh          -> everything (what CI runs)
#   scripts/test.sh --fast   -> lint + types + the fast selection (-m "not slow")
#   extra arguments after the flag go to pytest (e.g. scripts/test.sh --fast -k upload)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
select=()
if [ "${1:-}" = "--fast" ]; then
    select=(-m "not slow")
    shift
fi
bash scripts/setup.sh --test
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy --strict"
.venv/bin/mypy --strict src tests bench
echo "== pytest"
workers=$(( $(nproc) < 2 ? 1 : 2 ))
exec .venv/bin/pytest -n "$workers" -p no:cacheprovider "${select[@]}" "$@"
