"""The infra-repo loader: settings, addresses, kinds, dependencies, and the example repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from schema.errors import SpecError
from schema.repo import load_repo
from tests.conftest import EXAMPLES


def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_example_repo_loads_with_every_kind() -> None:
    state = load_repo(EXAMPLES / "repo-layout")
    assert sorted(state.resources) == [
        "cluster.dev",
        "cluster.gpu-workstation",
        "job.allreduce",
        "job.data-pipeline",
        "job.finetune-spot",
        "job.train-tiny",
        "service.echo-api",
        "service.llm-serve",
    ]
    assert [str(e) for e in state.config.infra] == [
        "local",
        "kubernetes/kind-skyform",
        "aws/us-east-1",
        "gcp/us-central1",
    ]
    k8s = state.config.infra[1]
    assert k8s.pricing is not None and k8s.pricing.accelerators == {"L4": 0.45}
    assert state.config.policy.protect == ("cluster.dev",)
    assert state.config.reconcile.drift_interval == 600.0
    pipeline = state.resources["job.data-pipeline"]
    assert pipeline.source.is_pipeline and len(pipeline.source.tasks) == 2
    assert state.resources["job.allreduce"].source.tasks[0].task.num_nodes == 2
    assert state.resources["job.train-tiny"].skyform.depends_on == ("cluster.dev",)
    assert state.resources["job.finetune-spot"].required_envs == ("HF_TOKEN",)
    llm = state.resources["service.llm-serve"].source.tasks[0].task
    assert llm.service is not None and llm.service.policy.autoscaling
    warnings = [w.message for w in state.warnings]
    assert warnings == ["env HF_TOKEN has no value: it is a required input"]


def test_name_defaults_to_file_stem_and_kind_to_folder(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        {
            "jobs/nightly-eval.yaml": "run: echo\n",
            "clusters/team/a.yml": "name: box\nrun: echo\n",
        },
    )
    state = load_repo(root)
    assert sorted(state.resources) == ["cluster.box", "job.nightly-eval"]
    assert state.resources["cluster.box"].file == "clusters/team/a.yml"
    assert state.config.infra[0].infra.cloud == "local"


def test_all_files_errors_are_reported_together(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        {
            "jobs/a.yaml": "num_nodes: 0\n",
            "jobs/b.yaml": "resources: {cpus: x}\n",
            "services/c.yaml": "service: {replicas: 1}\nrun: x\nskyform: {depends_on: [job.zz]}\n",
        },
    )
    with pytest.raises(SpecError) as info:
        load_repo(root)
    files = {d.file for d in info.value.errors}
    assert files == {"jobs/a.yaml", "jobs/b.yaml", "services/c.yaml"}


def test_a_broken_file_never_reads_as_a_missing_resource(tmp_path: Path) -> None:
    """A parse error fails the whole load: callers never see a partial desired state."""
    root = _repo(tmp_path, {"jobs/ok.yaml": "run: echo\n", "jobs/broken.yaml": "run: [\n"})
    with pytest.raises(SpecError):
        load_repo(root)


def test_env_overrides_fill_required_inputs(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        {"jobs/j.yaml": "envs: {BUCKET: null}\nfile_mounts:\n  /data: s3://$BUCKET/x\nrun: x\n"},
    )
    assert load_repo(root).resources["job.j"].required_envs == ("BUCKET",)
    state = load_repo(root, {"BUCKET": "my-bucket"})
    task = state.resources["job.j"].source.tasks[0].task
    assert task.required_envs == ()
    assert task.file_mounts == {"/data": "s3://my-bucket/x"}


def test_not_an_infra_repo(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not an infra repo"):
        load_repo(tmp_path)


def test_protect_must_name_a_declared_address(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        {"skyform.yaml": "policy:\n  protect: [cluster.gone]\n", "jobs/j.yaml": "run: x\n"},
    )
    state = load_repo(root)
    assert [w.message for w in state.warnings] == [
        "policy.protect names cluster.gone, which no file declares"
    ]
    assert state.warnings[0].line == 2
