#!/usr/bin/env bash
# The main job on the embedded default (local provider, SQLite state in $SKYFORM_HOME):
# installs Skyform into .venv, then validates and plans examples/repo-layout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
repo=examples/repo-layout
echo "== skyform validate $repo"
skyform validate "$repo"
echo "== skyform optimize (where each task would run, and what it costs)"
skyform optimize "$repo"/jobs/*.yaml "$repo"/services/*.yaml --infra aws --infra gcp || true
