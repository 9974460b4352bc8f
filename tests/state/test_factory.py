"""open_store: which URL opens what, and the errors for the ones it cannot open."""

from __future__ import annotations

from pathlib import Path

import pytest

from state import StateError, open_store


def test_no_url_means_sqlite_in_the_skyform_home(tmp_path: Path) -> None:
    home = tmp_path / "not-yet" / "home"
    with open_store(None, home) as store:
        assert store.url == f"sqlite:///{home / 'state.db'}"
    assert (home / "state.db").is_file()


@pytest.mark.parametrize("form", ["sqlite:///{path}", "{path}"])
def test_a_sqlite_url_or_a_bare_path_opens_that_file(tmp_path: Path, form: str) -> None:
    path = tmp_path / "sub" / "s.db"
    with open_store(form.format(path=path), tmp_path / "home") as store:
        assert store.url == f"sqlite:///{path}"
    assert path.is_file()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("url", ["rel.db", "sqlite:///rel.db"])
def test_a_relative_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    open_store(url, tmp_path / "home").close()
    assert (tmp_path / "rel.db").is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/x", "not supported"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite://host/x.db", "names no file"),
    ],
)
def test_unusable_urls_are_refused_with_the_accepted_forms(
    tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(StateError, match=message):
        open_store(url, tmp_path)


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"junk\.db"):
        open_store(str(junk), tmp_path)


def test_an_unreachable_postgresql_is_a_state_error_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://u:hunter2@127.0.0.1:1/db?connect_timeout=2"
    with pytest.raises(StateError, match="cannot connect") as refused:
        open_store(url, tmp_path)
    assert "hunter2" not in str(refused.value)


@pytest.mark.postgres
def test_postgres_scheme_is_an_alias(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url.replace("postgresql://", "postgres://"), tmp_path) as store:
        assert store.url.startswith("postgres://")
        assert store.meta().serial == 0
