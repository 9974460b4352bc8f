"""Golden error messages for bad input: what, where (file:line:col) and how to fix it.

Set SKYFORM_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate wording change,
then read the diff before committing it.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from schema.errors import SpecError
from schema.loader import load_tasks
from schema.repo import load_repo
from schema.yaml_source import decode

GOLDEN = Path(__file__).parent / "golden"

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)

TASKS: dict[str, str | bytes] = {
    "typo_key": "resources:\n  acelerators: A100:8\nrun: python train.py\n",
    "typo_top_level_key": "name: t\nrn: echo hi\n",
    "renamed_key": "resources:\n  accelerators: V100\n  spot_recovery: FAILOVER\n",
    "wrong_type": "name: t\nnum_nodes: two\n",
    "negative_num_nodes": "num_nodes: -1\nrun: echo\n",
    "bad_accelerator": "resources:\n  accelerators: A100:eight\n",
    "zero_accelerators": "resources:\n  accelerators: {A100: 0}\n",
    "bad_port_range": "resources:\n  ports: [8080, 9000-8000]\n",
    "port_out_of_range": "resources:\n  ports: 70000\n",
    "unknown_cloud": "resources:\n  infra: awz/us-east-1\n",
    "infra_and_cloud": "resources:\n  infra: aws\n  cloud: gcp\n",
    "any_of_and_ordered": "resources:\n  any_of: [{infra: aws}]\n  ordered: [{infra: gcp}]\n",
    "bad_cpus": "resources:\n  cpus: four+\n",
    "bad_strategy": "resources:\n  job_recovery: RETRY_FOREVER\n",
    "label_not_string": "resources:\n  labels:\n    team: 42\n",
    "replicas_and_policy": (
        "service:\n  readiness_probe: /health\n  replicas: 2\n"
        "  replica_policy:\n    min_replicas: 1\nrun: serve\n"
    ),
    "probe_without_slash": "service:\n  readiness_probe: health\nrun: serve\n",
    "autoscale_without_qps": (
        "service:\n  readiness_probe: /\n  replica_policy:\n    min_replicas: 1\n"
        "    max_replicas: 3\nrun: serve\n"
    ),
    "bad_env_name": "envs:\n  1BAD: x\nrun: echo\n",
    "tabs": "resources:\n\taccelerators: A100\n",
    "unclosed_bracket": "resources:\n  ports: [8080, 8081\nrun: echo\n",
    "duplicate_key": "run: echo a\nsetup: pip install x\nrun: echo b\n",
    "not_a_mapping": "- run: echo\n- run: echo\n",
    "empty_file": "",
    "only_comments": "# nothing here yet\n",
    "non_utf8": b"name: caf\xe9\nrun: echo\n",
    "huge_file": b"run: |\n" + b"  echo padding padding padding padding padding\n" * 230_000,
    "yaml_bomb": BOMB,
    "deep_nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "several_errors": (
        "name: multi\nnum_nodes: 0\nresources:\n  acelerators: A100\n  use_spot: maybe\n"
        "  disk_tier: fastest\nservice:\n  replicas: -2\n"
    ),
}


def _error_text(name: str, source: str | bytes) -> str:
    file = f"{name}.yaml"
    with pytest.raises(SpecError) as info:
        text = decode(source, file) if isinstance(source, bytes) else source
        load_tasks(text, file)
    assert info.value.errors, "a SpecError must carry at least one error"
    for d in info.value.diagnostics:
        assert d.file == file and d.line >= 1 and d.col >= 1 and d.message
    return str(info.value) + "\n"


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("SKYFORM_UPDATE_GOLDEN"):
        path.write_text(actual)
    assert path.exists(), f"no golden file {path.name}; run with SKYFORM_UPDATE_GOLDEN=1"
    assert actual == path.read_text()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_error_golden(name: str) -> None:
    _check_golden(name, _error_text(name, TASKS[name]))


@pytest.mark.parametrize("name", ["yaml_bomb", "huge_file", "deep_nesting"])
def test_hostile_input_uses_bounded_memory(name: str) -> None:
    tracemalloc.start()
    try:
        _error_text(name, TASKS[name])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


REPOS: dict[str, dict[str, str]] = {
    "repo_cycle": {
        "skyform.yaml": "infra: [local]\n",
        "clusters/a.yaml": "run: echo\nskyform:\n  depends_on: [job.b]\n",
        "jobs/b.yaml": "run: echo\nskyform:\n  depends_on: [service.c]\n",
        "services/c.yaml": (
            "service:\n  readiness_probe: /\nrun: x\nskyform:\n  depends_on: [cluster.a]\n"
        ),
    },
    "repo_duplicate_name": {
        "jobs/train.yaml": "name: train\nrun: echo 1\n",
        "jobs/train-v2.yaml": "\nname: train\nrun: echo 2\n",
    },
    "repo_unknown_dependency": {
        "jobs/eval.yaml": "run: echo\nskyform:\n  depends_on: [job.trian]\n",
        "jobs/train.yaml": "run: echo\n",
    },
    "repo_bad_config": {
        "skyform.yaml": "infra: [local, awz]\npolicy:\n  prunе: true\n  max_hourly_cost: -5\n",
        "jobs/ok.yaml": "run: echo\n",
    },
    "repo_wrong_kind": {
        "clusters/web.yaml": "service:\n  readiness_probe: /\nrun: serve\n",
        "services/batch.yaml": "run: echo\n",
        "clusters/pipe.yaml": "name: p\n---\nrun: a\n---\nrun: b\n",
    },
    "repo_errors_in_many_files": {
        "jobs/a.yaml": "num_nodes: 0\n",
        "jobs/b.yaml": "resources:\n  cpus: lots\n",
        "clusters/bad name.yaml": "run: echo\n",
    },
}


@pytest.mark.parametrize("name", sorted(REPOS))
def test_repo_error_golden(name: str, tmp_path: Path) -> None:
    root = _repo(tmp_path, REPOS[name])
    with pytest.raises(SpecError) as info:
        load_repo(root)
    for d in info.value.diagnostics:
        assert not Path(d.file).is_absolute(), "repo errors name files relative to the repo"
    _check_golden(name, str(info.value) + "\n")
