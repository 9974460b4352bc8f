#!/usr/bin/env bash
# The main job on the embedded default (local provider, SQLite state in $SKYFORM_HOME, default
# ~/.skyform): installs Skyform into .venv, then validates and plans examples/repo-layout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
repo=examples/repo-layout
# The example's fine-tuning job declares HF_TOKEN without a value (a required input).
export HF_TOKEN=${HF_TOKEN:-demo-token}
echo "== skyform validate $repo"
skyform validate "$repo"
echo "== skyform plan $repo"
skyform plan "$repo" --out "${TMPDIR:-/tmp}/skyform-demo-plan.json"
