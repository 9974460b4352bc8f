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
    home = tmp_path / "skyform-home"
    home.mkdir()
    monkeypatch.setenv("SKYFORM_HOME", str(home))
    yield home
