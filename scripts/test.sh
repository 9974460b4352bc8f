#!/usr/bin/env bash
# Installs Skyform with its dev tools into .venv and runs every check CI runs:
# ruff, mypy --strict, import-linter, then pytest (PostgreSQL-backed tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
. .venv/bin/activate
bash scripts/ensure-postgres.sh
bash scripts/ensure-chromium.sh
bash scripts/ensure-sshd.sh
# One command a line: `set -e` ignores a failure anywhere in an && list but its end.
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy
echo "== import-linter"
lint-imports --no-cache
echo "== pytest"
pytest "$@"
