"""`skyform validate` output formats and exit codes, run through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from reconciler.cli import main
from tests.conftest import EXAMPLES


def _bad_repo(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "a.yaml").write_text("resources:\n  acelerators: A100\nrun: x\n")
    (tmp_path / "jobs" / "b.yaml").write_text("envs:\n  TOKEN:\nrun: x\n")
    return tmp_path


def test_valid_repo_exits_zero() -> None:
    result = CliRunner().invoke(main, ["validate", str(EXAMPLES / "repo-layout")])
    assert result.exit_code == 0, result.output
    assert "valid: 8 files checked (2 clusters, 4 jobs, 2 services), 1 warning(s)" in result.output


def test_invalid_repo_text(tmp_path: Path) -> None:
    root = _bad_repo(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(root)])
    assert result.exit_code == 1
    assert f"{root}/jobs/a.yaml:2:3: error: unknown key 'acelerators' in resources" in result.output
    assert "hint: did you mean 'accelerators'?" in result.output
    assert "invalid: 2 files checked: 1 error(s), 1 warning(s)" in result.output


def test_json_format(tmp_path: Path) -> None:
    root = _bad_repo(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(root), "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["valid"] is False and doc["files"] == 2
    assert doc["errors"] == [
        {
            "file": f"{root}/jobs/a.yaml",
            "line": 2,
            "col": 3,
            "message": "unknown key 'acelerators' in resources",
            "hint": "did you mean 'accelerators'?",
        }
    ]
    assert [w["message"] for w in doc["warnings"]] == [
        "env TOKEN has no value: it is a required input"
    ]


def test_github_format(tmp_path: Path) -> None:
    root = _bad_repo(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(root), "--format", "github"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        f"::error file={root}/jobs/a.yaml,line=2,col=3::unknown key 'acelerators' in resources "
        "(hint: did you mean 'accelerators'?)" in lines
    )
    assert any(
        line.startswith(f"::warning file={root}/jobs/b.yaml,line=2,col=3::") for line in lines
    )


def test_single_files_and_env(tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("envs:\n  TOKEN:\nrun: echo $TOKEN\n")
    result = CliRunner().invoke(main, ["validate", str(task), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["warnings"][0]["line"] == 2
    result = CliRunner().invoke(
        main, ["validate", str(task), "--env", "TOKEN=abc", "--format", "json"]
    )
    assert json.loads(result.output)["warnings"] == []
    bad = CliRunner().invoke(main, ["validate", str(task), "--env", "no-equals"])
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output


def test_secrets_never_printed(tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("secrets:\n  API_KEY: sk-live-123\nrun: x\nresources: {cpus: bad}\n")
    result = CliRunner().invoke(main, ["validate", str(task)])
    assert result.exit_code == 1
    assert "sk-live-123" not in result.output
    dup = tmp_path / "d.yaml"
    dup.write_text("secrets:\n  API_KEY: sk-live-123\n  API_KEY: sk-live-456\nrun: x\n")
    result = CliRunner().invoke(main, ["validate", str(dup)])
    assert result.exit_code == 1 and "sk-live" not in result.output
