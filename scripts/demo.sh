#!/usr/bin/env bash
# The main job on the embedded default (local provider, SQLite state in $SKYFORM_HOME, default
# ~/.skyform): installs Skyform into .venv, validates and plans examples/repo-layout, then
# applies the resources that target this machine and shows them running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
repo=examples/repo-layout
# The example's fine-tuning job declares HF_TOKEN without a value (a required input).
export HF_TOKEN=${HF_TOKEN:-demo-token}
echo "== skyform validate $repo"
skyform validate "$repo"
echo "== skyform plan $repo (everything: cloud resources show where they would run)"
skyform plan "$repo" > "${TMPDIR:-/tmp}/skyform-demo-plan.txt" || true
head -n 1 "${TMPDIR:-/tmp}/skyform-demo-plan.txt"
# This machine has no cloud credentials: apply the resources that run here.
targets=(--target cluster.dev --target job.train-tiny --target job.allreduce
         --target job.data-pipeline --target service.echo-api)
echo "== skyform apply $repo ${targets[*]}"
skyform apply "$repo" --yes "${targets[@]}"
echo "== waiting for the jobs to finish"
for _ in $(seq 1 60); do
  if skyform status --repo "$repo" --format json | python3 -c '
import json, sys
rows = {r["address"]: r["status"] for r in json.load(sys.stdin)}
jobs = [s for a, s in rows.items() if a.startswith("job.")]
sys.exit(0 if jobs and all(s in ("SUCCEEDED", "FAILED", "CANCELLED") for s in jobs) else 1)'; then
    break
  fi
  sleep 1
done
skyform status --repo "$repo"
echo "== skyform logs job.train-tiny"
skyform logs job.train-tiny | tail -n 3
endpoint=$(skyform status --repo "$repo" --format json |
  python3 -c 'import json,sys; print([r["endpoint"] for r in json.load(sys.stdin) if r["address"]=="service.echo-api"][0])')
echo "== GET $endpoint/hello (through the load balancer)"
for _ in $(seq 1 30); do
  if python3 -c "import urllib.request,sys; print(urllib.request.urlopen('$endpoint/hello', timeout=3).read().decode())" 2>/dev/null; then
    break
  fi
  sleep 1
done
echo "== a second plan finds nothing to do"
skyform plan "$repo" "${targets[@]}" | head -n 1
echo "Done. Tear down with: skyform destroy --repo $repo (cluster.dev is protected: lift 'protect' first)"
