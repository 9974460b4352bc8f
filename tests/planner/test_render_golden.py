"""Golden renderings (text, markdown, json) of the example repo and of every action kind.

Set SKYFORM_UPDATE_GOLDEN=1 to rewrite them after a deliberate change; review the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from planner.plan import Plan, from_json, to_json
from planner.render_markdown import render_markdown
from planner.render_text import render_text
from tests.conftest import EXAMPLES
from tests.planner.plan_helpers import applied, plan_repo, write_repo

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SKYFORM_UPDATE_GOLDEN"):
        path.write_text(actual)
    assert path.exists(), f"missing golden {name}; run with SKYFORM_UPDATE_GOLDEN=1"
    assert actual == path.read_text()


def _all_formats(name: str, plan: Plan) -> None:
    _check(f"{name}.txt", render_text(plan))
    _check(f"{name}.md", render_markdown(plan))
    _check(f"{name}.json", to_json(plan))
    # The human forms are functions of the JSON form: a saved plan renders the same.
    assert render_text(from_json(to_json(plan))) == render_text(plan)


def test_example_repo_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(EXAMPLES / "repo-layout", tmp_path / "repo-layout")
    monkeypatch.chdir(tmp_path)  # the plan names the repo as the user gave it
    plan = plan_repo(Path("repo-layout"), env={"HF_TOKEN": "hf_example"})
    assert not plan.errors
    _all_formats("example_create", plan)


ACTIONS_BEFORE = {
    "skyform.yaml": "infra: [local, aws, gcp]\npolicy:\n  prune: true\n",
    "clusters/keep.yaml": "resources: {infra: local, cpus: 1}\nrun: echo keep\n",
    "clusters/grow.yaml": "resources: {infra: local, cpus: 1, autostop: 10}\nrun: echo grow\n",
    "jobs/retrain.yaml": "resources: {accelerators: A100:1}\nrun: python train.py --lr 0.1\n",
    "jobs/old.yaml": "resources: {infra: local}\nrun: echo old\n",
    "services/web.yaml": (
        "resources: {infra: local, ports: 8080}\nservice:\n  readiness_probe: /\n"
        "  replicas: 1\nsecrets:\n  DB_PASSWORD: hunter2\nrun: python web.py\n"
    ),
}


@pytest.mark.parametrize("fmt", ["all"])
def test_each_action_kind_golden(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = write_repo(Path("repo"), ACTIONS_BEFORE)
    live = applied(
        plan_repo(root),
        changes={"service.web": {"ready_replicas": 1}},
    )
    write_repo(
        root,
        {
            "clusters/grow.yaml": ACTIONS_BEFORE["clusters/grow.yaml"].replace("10", "45"),
            "jobs/retrain.yaml": ACTIONS_BEFORE["jobs/retrain.yaml"].replace("0.1", "0.2"),
            "services/web.yaml": ACTIONS_BEFORE["services/web.yaml"].replace(
                "replicas: 1", "replicas: 3"
            ),
            "jobs/new.yaml": "resources: {infra: local}\nrun: echo new\n",
        },
    )
    (root / "jobs" / "old.yaml").unlink()
    plan = plan_repo(root, live)
    _all_formats("actions", plan)
    assert "hunter2" not in to_json(plan) + render_text(plan) + render_markdown(plan)


def test_markdown_is_cut_in_details_never_in_summary(tmp_path: Path) -> None:
    files = {"skyform.yaml": "infra: [local]\n"}
    for i in range(400):
        files[f"jobs/job-{i:03}.yaml"] = "resources: {infra: local}\nrun: |\n" + "".join(
            f"  echo line {j} of job {i}\n" for j in range(30)
        )
    plan = plan_repo(write_repo(tmp_path, files))
    text = render_markdown(plan)
    assert len(text) <= 65_536
    assert text.startswith(
        "### Skyform plan: 400 to create, 0 to update, 0 to replace, 0 to delete"
    )
    assert "cut to fit a comment" in text
