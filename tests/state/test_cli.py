"""`skyform state ...` through click's CliRunner, against real stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from state import PlacementKey, Resource, Store, open_store


@pytest.fixture
def home(skyform_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SKYFORM_STATE", raising=False)
    return skyform_home


@pytest.fixture
def seeded(home: Path) -> Iterator[Store]:
    store = open_store(None, home)
    store.put_resources(
        [
            Resource("job.train-bert", "job", "h1", {"run": "python train.py"}, status="running"),
            Resource("service.web", "service", "h2", {"replicas": 2}, {"infra": "local"}),
        ]
    )
    run = store.begin_run("apply", "alice", "0123456789abcdef", "plan-1")
    store.finish_run(run.id, "succeeded", "2 created")
    store.block_placement(PlacementKey(infra="aws"), "ICE", ttl=600)
    yield store
    store.close()


def state(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["state", *args], input=input)


def test_state_is_a_registered_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "state" in result.output


def test_list_prints_addresses_and_the_serial(seeded: Store) -> None:
    result = state("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["job.train-bert", "running"],
        ["service.web", "unknown"],
    ]
    assert "2 resource(s); serial 1" in result.stderr
    assert state("list", "--kind", "service").stdout.split()[0] == "service.web"


def test_list_shows_a_held_lock(seeded: Store) -> None:
    lock = seeded.acquire_lock("bob", "apply")
    assert "locked by bob" in state("list").stderr
    assert lock.lock_id in state("list").stderr


def test_show_prints_one_resource_as_json(seeded: Store) -> None:
    result = state("show", "service.web")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["address"], shown["placement"], shown["spec"]) == (
        "service.web",
        {"infra": "local"},
        {"replicas": 2},
    )


def test_show_of_a_missing_address_fails_and_says_where_to_look(seeded: Store) -> None:
    result = state("show", "job.nope")
    assert result.exit_code == 1
    assert "no resource 'job.nope'" in result.stderr
    assert "skyform state list" in result.stderr


def test_history_lists_runs_newest_first(seeded: Store) -> None:
    seeded.begin_run("plan", "carol")
    result = state("history")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert "plan" in first and "carol" in first and "running" in first
    assert "0123456789ab " in second and "plan-1" in second and "2 created" in second


def test_history_of_a_new_store_says_so(home: Path) -> None:
    result = state("history")
    assert result.exit_code == 0
    assert "no runs" in result.stderr


def test_unlock_breaks_the_named_lock_and_records_who(seeded: Store) -> None:
    lock = seeded.acquire_lock("bob", "apply")
    wrong = state("unlock", "not-it")
    assert wrong.exit_code == 1 and "does not match" in wrong.stderr
    result = state("unlock", lock.lock_id)
    assert result.exit_code == 0, result.output
    assert "unlocked" in result.stdout
    assert seeded.current_lock() is None
    assert seeded.events("state")[0].kind == "unlock"
    again = state("unlock", lock.lock_id)
    assert again.exit_code == 1 and "not locked" in again.stderr


def test_export_then_import_into_another_store(seeded: Store, tmp_path: Path) -> None:
    exported = tmp_path / "state.json"
    result = state("export", str(exported))
    assert result.exit_code == 0, result.output
    document = json.loads(exported.read_text())
    assert document["serial"] == 1
    assert [r["address"] for r in document["resources"]] == ["job.train-bert", "service.web"]

    other = tmp_path / "other.db"
    result = state("--state", str(other), "import", str(exported))
    assert result.exit_code == 0, result.output
    with open_store(str(other), tmp_path) as imported:
        assert imported.meta().lineage == seeded.meta().lineage
        assert [r.address for r in imported.list_resources()] == [
            "job.train-bert",
            "service.web",
        ]
        assert imported.current_lock() is None  # import's own lock is released


def test_export_to_stdout_and_import_from_stdin(seeded: Store, tmp_path: Path) -> None:
    document = state("export", "-").stdout
    assert json.loads(document)["format"] == "skyform-state"
    result = state("--state", str(tmp_path / "o.db"), "import", "-", input=document)
    assert result.exit_code == 0, result.output


def test_import_of_an_older_serial_needs_force(seeded: Store, tmp_path: Path) -> None:
    exported = tmp_path / "old.json"
    state("export", str(exported))
    seeded.delete_resource("service.web")
    refused = state("import", str(exported))
    assert refused.exit_code == 1
    assert "older" in refused.stderr and "--force" in refused.stderr
    assert state("import", "--force", str(exported)).exit_code == 0
    assert seeded.get_resource("service.web") is not None


def test_import_of_a_file_that_is_not_json_fails_clearly(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = state("import", str(bad))
    assert result.exit_code == 1
    assert "cannot read a state document" in result.stderr


def test_the_state_url_comes_from_the_environment(
    seeded: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKYFORM_STATE", f"sqlite:///{tmp_path / 'env.db'}")
    result = state("list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert (tmp_path / "env.db").is_file()


def test_an_unsupported_state_url_is_a_clean_error(home: Path) -> None:
    result = state("--state", "mysql://x/y", "list")
    assert result.exit_code == 1
    assert "not supported" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.postgres
def test_the_cli_works_on_postgresql(pg_url: str, tmp_path: Path, home: Path) -> None:
    with open_store(pg_url, tmp_path) as store:
        store.put_resource(Resource("job.a", "job", "h"))
    result = state("--state", pg_url, "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[0] == "job.a"
