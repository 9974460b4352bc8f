"""Managed jobs on Kubernetes end to end: the managed-job controller's logic (JobRunner, on a
fake clock) over the Kubernetes provider and two fake clusters: a gang that does not fit fails
over to the next context leaving nothing behind, an evicted pod is recovered, and a non-zero
exit counts toward max_restarts_on_errors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from applier.controllers import job_record as jr
from applier.controllers.common import ControllerSpec
from applier.controllers.job import JobRunner
from applier.provider import Handle, Placement
from applier.providers.kubernetes import KubernetesProvider
from tests.k8s_server.harness import Kube

CTX_A = Placement("kubernetes", "ctx-a", cpus=12, memory_gib=8)
CTX_B = Placement("kubernetes", "ctx-b", cpus=12, memory_gib=8)
GANG = "num_nodes: 2\nresources:\n  cpus: 12\nrun: torchrun train.py\n"


def runner(tmp_path: Path, provider: KubernetesProvider, yaml: str) -> JobRunner:
    directory = tmp_path / "ctl"
    directory.mkdir(exist_ok=True)
    spec = ControllerSpec(
        kind="job",
        address="job.train",
        skyform_id="0123456789abcdef",
        source_text=yaml,
        source_file="jobs/train.yaml",
        base_dir=str(tmp_path),
        candidates=(asdict(CTX_A), asdict(CTX_B)),
        poll_seconds=0.0,
    )
    clock = [1_000_000.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    return JobRunner(spec, {"kubernetes": provider}, directory, clock=lambda: clock[0], sleep=sleep)


def step_until(run: JobRunner, status: str) -> Handle:
    for _ in range(20):
        if run.record.status == status and run.record.handle:
            return Handle.from_dict(run.record.handle)
        assert run.step() is not None, f"ended {run.record.status}: {run.record.message}"
    raise AssertionError(f"never reached {status}: {run.record.message}")


def finish(kube: Kube, handle: Handle, code: int = 0) -> None:
    prefix = handle.resource_id.partition("/")[2]
    server = kube.server(handle.placement.region or "")
    for rank in range(handle.num_nodes):
        server.cluster.finish("default", f"{prefix}-{rank}", code)


def test_a_gang_that_does_not_fit_fails_over_to_the_next_context(
    kube: Kube, tmp_path: Path
) -> None:
    run = runner(tmp_path, kube.provider(), GANG)
    handle = step_until(run, jr.RUNNING)

    assert handle.placement.region == "ctx-b"
    outcomes = [(a["placement"]["region"], a["outcome"]) for a in run.record.attempts]
    assert outcomes == [("ctx-a", "capacity"), ("ctx-b", "launched")]
    assert kube.pods("ctx-a") == [] and kube.a.store.list("services", "default") == []
    assert len(kube.pods("ctx-b")) == 2

    finish(kube, handle)
    assert run.run(max_steps=10) == jr.SUCCEEDED
    assert kube.pods("ctx-b") == []  # retired after success


def test_an_evicted_pod_is_recovered_with_the_same_task_id(kube: Kube, tmp_path: Path) -> None:
    yaml = "resources:\n  cpus: 12\n  job_recovery: FAILOVER\nrun: python train.py\n"
    run = runner(tmp_path, kube.provider(), yaml)
    first = step_until(run, jr.RUNNING)
    assert first.placement.region == "ctx-a"

    prefix = first.resource_id.partition("/")[2]
    kube.a.cluster.evict("default", f"{prefix}-0")
    run.step()  # sees NODE_LOST, retires the lost pod
    assert run.record.status == jr.RECOVERING and run.record.recoveries == 1
    second = step_until(run, jr.RUNNING)

    assert second.skyform_id != first.skyform_id and second.task_id == first.task_id
    assert kube.pods("ctx-a", f"skyform.io/id={first.skyform_id}") == []
    finish(kube, second)
    assert run.run(max_steps=10) == jr.SUCCEEDED
    assert (run.record.recoveries, run.record.restarts) == (1, 0)


def test_a_failing_run_restarts_up_to_max_restarts_then_fails(kube: Kube, tmp_path: Path) -> None:
    yaml = (
        "resources:\n  cpus: 12\n  job_recovery:\n    max_restarts_on_errors: 1\n"
        "run: python train.py\n"
    )
    run = runner(tmp_path, kube.provider(), yaml)
    finish(kube, step_until(run, jr.RUNNING), 2)
    run.step()
    assert run.record.status == jr.RECOVERING and run.record.restarts == 1
    finish(kube, step_until(run, jr.RUNNING), 2)
    assert run.run(max_steps=10) == jr.FAILED
    assert run.record.exit_codes == [2]
    assert kube.pods("ctx-a") == [] and kube.pods("ctx-b") == []
