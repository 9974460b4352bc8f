"""Every real-world SkyPilot YAML loads as SkyPilot 0.14.1's loader treats it (MANIFEST.tsv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from schema.errors import SpecError
from schema.loader import TaskFile, load_task_file
from tests.conftest import CORPUS

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def _manifest() -> list[dict[str, str]]:
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "MANIFEST.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _manifest()


def _required(tf: TaskFile) -> set[str]:
    return {name for t in tf.tasks for name in t.task.required_envs}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_corpus_file_matches_skypilot(row: dict[str, str]) -> None:
    path = CORPUS / row["file"]
    expected = row["sky_0.14.1_load"]
    if expected.startswith("rejected"):
        with pytest.raises(SpecError) as info:
            load_task_file(path)
        errors = info.value.errors
        assert errors, "rejected files must fail with at least one error"
        assert all(e.file == str(path) and e.line > 0 for e in errors)
        if "spot_recovery" in expected:
            assert any("spot_recovery" in e.message and "job_recovery" in e.hint for e in errors)
        if "target_qps_per_replica" in expected:
            assert any("target_qps_per_replica" in e.message for e in errors)
        return
    tf = load_task_file(path)
    assert tf.tasks
    if expected == "ok":
        assert _required(tf) == set()
        assert not tf.warnings
    else:
        names = set(expected.removeprefix("needs-env:").split(","))
        assert _required(tf) == names
        warned = {w.message.split()[1] for w in tf.warnings}
        assert warned == names
        assert all(w.line > 0 for w in tf.warnings)
        # Supplying the values makes the warnings go away, as `sky launch --env` would.
        filled = load_task_file(path, {n: "x" for n in names})
        assert _required(filled) == set() and not filled.warnings


def test_corpus_documents_count_matches_manifest() -> None:
    for row in ROWS:
        if row["sky_0.14.1_load"].startswith("rejected"):
            continue
        tf = load_task_file(CORPUS / row["file"])
        docs = int(row["docs"])
        assert len(tf.tasks) + (tf.header is not None) == docs, row["file"]


def _load(name: str) -> TaskFile:
    return load_task_file(Path(CORPUS) / name)


def test_sample_multi_accelerator_set() -> None:
    task = _load("examples__multi_accelerators.yaml").tasks[0].task
    acc = task.resources.accelerators
    assert acc is not None and not acc.ordered
    ordered, choices = task.resources.choices()
    assert not ordered
    names = [c.accelerator.name for c in choices if c.accelerator]
    assert len(names) == len(acc.candidates) >= 2


def test_sample_fields_match_yaml_text() -> None:
    """A handful of files checked field by field against what their YAML says."""
    bert = _load("examples__spot__bert_qa.yaml").tasks[0].task
    assert bert.name == "bert_qa"
    assert bert.resources.accelerator is not None
    assert (bert.resources.accelerator.name, bert.resources.accelerator.count) == ("H100", 1.0)
    assert bert.envs == {"WANDB_RESUME": "allow"}
    assert list(bert.secrets) == ["WANDB_API_KEY"] and bert.secrets["WANDB_API_KEY"] is None
    assert bert.file_mounts is not None
    mount = bert.file_mounts["/checkpoint"]
    assert not isinstance(mount, str) and mount.mode == "MOUNT" and mount.name is None

    pipeline = _load("llm__gpt-2__gpt2-pipeline.yaml")
    assert [t.task.name for t in pipeline.tasks] == ["gpt2-data", "gpt2-train"]
    train = pipeline.tasks[1].task
    assert train.resources.image_id == "docker:nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    clouds = [c.infra.cloud for c in train.resources.any_of if c.infra]
    assert clouds == ["lambda", "aws", "gcp", "azure", "fluidstack", "kubernetes"]
    lam = train.resources.merged(train.resources.any_of[0])
    assert lam.image_id is None and lam.accelerator is not None
    assert lam.accelerator.name == "A100" and lam.accelerator.count == 8

    group = _load("examples__job-group-sdk__job_group.yaml")
    assert group.header is not None and group.header.execution == "parallel"
    assert [t.task.name for t in group.tasks] == ["server", "client"]
    server = group.tasks[0].task.resources
    assert server.infra is not None and server.infra.cloud == "kubernetes"
    assert server.cpus is not None and server.cpus.value == 2 and not server.cpus.at_least


def test_sample_services() -> None:
    for row in ROWS:
        if "service" not in row["top_level_keys"] or row["sky_0.14.1_load"].startswith("rej"):
            continue
        tf = load_task_file(CORPUS / row["file"], {"HF_TOKEN": "x"})
        services = [t.task.service for t in tf.tasks if t.task.service is not None]
        assert services, row["file"]
        for svc in services:
            assert svc.readiness_probe.path.startswith("/")
            policy = svc.policy
            assert policy.max_replicas is None or policy.max_replicas >= policy.min_replicas
