"""Shared fixtures: paths to the shared corpus and catalogs, and an isolated Skyform home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "skypilot-yaml"
CATALOG_SRC = SHARED / "catalog"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def skyform_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated Skyform home; whatever a test left running in it is stopped afterwards."""
    home = tmp_path / "skyform-home"
    home.mkdir()
    monkeypatch.setenv("SKYFORM_HOME", str(home))
    yield home
    stop_everything(home)


def stop_everything(home: Path) -> None:
    from applier.controllers import common
    from applier.providers.local import LocalProvider

    for directory, _ in common.list_controllers(home):
        common.request_cancel(directory)
        common.wait_stopped(directory, 20)
    provider = LocalProvider(home, grace_s=0.5)
    for observed in provider.observe():
        provider.terminate(observed.handle)
