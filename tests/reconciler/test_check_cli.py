"""`skyform check`: each infra usable or why not with the fix; exit 0 while one is usable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main


def _no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe


def test_without_aws_credentials_check_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_aws_credentials(monkeypatch, tmp_path)
    out = CliRunner().invoke(main, ["check", str(tmp_path)])
    assert out.exit_code == 0, out.output  # local is always usable
    assert "local: enabled" in out.output
    assert "aws: disabled" in out.output and "aws configure" in out.output


def test_with_credentials_aws_is_usable_and_repo_infra_is_listed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_aws_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    (tmp_path / "skyform.yaml").write_text("infra: [aws/us-east-1, local]\n")
    out = CliRunner().invoke(main, ["check", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    reasons = json.loads(out.output)
    assert reasons["aws"] is None and reasons["local"] is None
    assert set(reasons) >= {"local", "kubernetes", "aws", "gcp"}


def test_gcp_is_disabled_without_credentials_and_enabled_with_an_endpoint_and_project(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("SKYFORM_GCP_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CLOUDSDK_CORE_PROJECT", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC file
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata-server probe
    out = CliRunner().invoke(main, ["check", str(tmp_path)])
    assert "gcp: disabled" in out.output
    assert "gcloud auth application-default login" in out.output

    monkeypatch.setenv("SKYFORM_GCP_ENDPOINT", "http://127.0.0.1:9")  # never called by check
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "skyform-test")
    out = CliRunner().invoke(main, ["check", str(tmp_path), "--json"])
    assert json.loads(out.output)["gcp"] is None
