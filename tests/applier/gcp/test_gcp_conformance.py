"""The shared Provider conformance suite, run against the GCP provider (the fake GCE + a local
sshd). The capacity-accounting tests are left out: clouds are sized by the catalog."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from applier.provider import Handle, LaunchRequest, Placement, ResourceKind
from applier.providers.local_machine import LocalCaps
from tests.applier.gcp.conftest import MakeGcp
from tests.applier.test_provider_conformance import (
    Harness,
    task,
    test_a_failing_run_is_failed,
    test_a_node_killed_outside_skyform_is_node_lost,
    test_cluster_stop_and_start,
    test_handle_survives_a_round_trip_through_the_state_store,
    test_implements_the_protocol,
    test_job_lifecycle_launch_observe_succeed_logs_terminate,
    test_jobs_cannot_be_stopped,
    test_observe_filters_by_selector,
    test_relaunch_with_the_same_skyform_id_adopts,
)
from tests.gcp_support.fake_gce import FakeGce

__all__ = [
    "test_a_failing_run_is_failed",
    "test_a_node_killed_outside_skyform_is_node_lost",
    "test_cluster_stop_and_start",
    "test_handle_survives_a_round_trip_through_the_state_store",
    "test_implements_the_protocol",
    "test_job_lifecycle_launch_observe_succeed_logs_terminate",
    "test_jobs_cannot_be_stopped",
    "test_observe_filters_by_selector",
    "test_relaunch_with_the_same_skyform_id_adopts",
]

PLACEMENT = Placement("gcp", "us-central1", "us-central1-a", "n4-standard-2", cpus=2.0)


@dataclass
class GcpHarness(Harness):
    def placement(self, cpus: float = 0.1, memory_gib: float = 0.1) -> Placement:
        return PLACEMENT

    def request(
        self,
        yaml: str,
        address: str = "job.t",
        kind: ResourceKind = ResourceKind.JOB,
        skyform_id: str | None = None,
        cpus: float = 0.1,
    ) -> LaunchRequest:
        return LaunchRequest(
            address=address,
            skyform_id=skyform_id or str(uuid.uuid4()),
            kind=kind,
            task=task(yaml),
            placement=PLACEMENT,
        )


@pytest.fixture
def make(make_gcp: MakeGcp, gce: FakeGce) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def delete_outside_skyform(handle: Handle) -> None:
        """Someone deletes the (standard) instance from the console."""
        for part in handle.resource_id.split(","):
            zone, _, name = part.rpartition("/")
            gce.preempt(zone, name, delete=True)

    def build(caps: LocalCaps | None = None) -> Harness:
        harness = GcpHarness(make_gcp(), "gcp", delete_outside_skyform)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        for res in harness.provider.observe():
            harness.provider.terminate(res.handle)
    assert gce.live() == []  # every test leaves nothing behind


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    return make()
