"""`skyform plan` / `skyform show` through the CLI: formats, saved plans and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from tests.conftest import EXAMPLES


@pytest.fixture
def repo(tmp_path: Path, skyform_home: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "repo-layout", root)
    return root


def _plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["plan", *args])
    return result.exit_code, result.output


def test_exit_codes_follow_terraform(repo: Path) -> None:
    code, out = _plan(str(repo))
    assert code == 1, out  # HF_TOKEN is a required input
    assert "env HF_TOKEN has no value" in out
    code, out = _plan(str(repo), "--env", "HF_TOKEN=x")
    assert code == 0 and out.startswith("Plan: 8 to create")
    code, _ = _plan(str(repo), "--env", "HF_TOKEN=x", "--detailed-exitcode")
    assert code == 2


def test_environment_fills_required_inputs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-env")
    code, out = _plan(str(repo), "--format", "json")
    assert code == 0
    assert "from-env" not in out and json.loads(out)["required_inputs"] == []


def test_saved_plan_renders_the_same(repo: Path, tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    code, text = _plan(str(repo), "--env", "HF_TOKEN=x", "--out", str(saved))
    assert code == 0
    assert f"Saved the plan to {saved}" in text
    shown = CliRunner().invoke(main, ["show", str(saved)])
    assert shown.exit_code == 0
    assert shown.output == text.split(f"Saved the plan to {saved}")[0]
    md = CliRunner().invoke(main, ["show", str(saved), "--format", "markdown"])
    assert md.output.startswith("### Skyform plan: 8 to create")
    doc = json.loads(saved.read_text())
    assert doc["format_version"] == "1.0" and doc["serial"] == 0 and doc["lineage"]


def test_show_refuses_a_file_that_is_not_a_plan(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"format_version": "9.0"}')
    result = CliRunner().invoke(main, ["show", str(bad)])
    assert result.exit_code == 1 and "plan format 9.0 is not supported" in result.output


def test_a_broken_file_fails_the_plan_and_deletes_nothing(repo: Path) -> None:
    (repo / "jobs" / "train-tiny.yaml").write_text("resources:\n  cpus: [\n")
    code, out = _plan(str(repo), "--env", "HF_TOKEN=x")
    assert code == 1
    assert "jobs/train-tiny.yaml:3:1: error: invalid YAML" in out
    assert "nothing was planned" in out and "to delete" not in out


def test_target_limits_the_plan(repo: Path) -> None:
    code, out = _plan(str(repo), "--target", "job.train-tiny", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [c["address"] for c in doc["changes"]] == ["cluster.dev", "job.train-tiny"]
    code, out = _plan(str(repo), "--target", "job.nope", "--env", "HF_TOKEN=x")
    assert code == 1 and "--target job.nope: no such resource" in out
