"""A slow provider does not stall the others: while one provider's observe() hangs, drift on
another is still found and healed within the drift interval, and what the hung provider runs is
neither read as deleted nor touched."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from applier.provider import FreeCapacity, ObservedResource, Selector
from applier.providers.fake import FakeProvider
from applier.refresh import refresh
from reconciler.context import live_offerings
from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from state import Resource
from tests.reconciler.daemon._support import Remote, cluster, http, metric, wait_for

CONFIG = (
    "infra: [local, aws/us-east-1]\npolicy: {prune: true}\n"
    "reconcile: {poll_interval: 1h, drift_interval: 1s}\n"
)
GPU = "name: gpu\nresources: {infra: aws/us-east-1, cpus: 2}\nrun: sleep 600\n"


class Stalling(FakeProvider):
    """A provider whose listing hangs (an API that stopped answering) once `stalled` is set."""

    def __init__(self, name: str, capacity: list[FreeCapacity] | None = None) -> None:
        super().__init__(name, capacity=capacity)
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.hung = 0  # observe() calls that entered while stalled

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        self._stall()
        return super().observe(selector)

    def capacity(self) -> list[FreeCapacity]:
        self._stall()
        return super().capacity()

    def _stall(self) -> None:
        if self.stalled.is_set():
            self.hung += 1
            self.release.wait(timeout=60)


@pytest.fixture
def aws() -> Iterator[Stalling]:
    provider = Stalling("aws")
    try:
        yield provider
    finally:
        provider.release.set()  # no test leaves a thread hanging


def test_refresh_keeps_a_slow_providers_resources_and_answers_in_time(aws: Stalling) -> None:
    local = FakeProvider("local")
    records = []
    for name, provider in (("box", local), ("gpu", aws)):
        sid = f"{name}-id"
        records.append(
            Resource(
                address=f"cluster.{name}",
                kind="cluster",
                spec_hash="h",
                spec={},
                placement=None,
                handles={"provider": provider.name, "skyform_id": sid},
                status="UP",
            )
        )
    aws.stalled.set()
    started = time.monotonic()
    live = refresh(records, {"local": local, "aws": aws}, timeout_s=0.3)
    assert time.monotonic() - started < 5
    # The local fake answered and lacks its cluster: deleted outside Skyform, drift to heal.
    assert live["cluster.box"].drift == "deleted outside Skyform"
    # The hung provider says nothing: its cluster keeps its recorded status, no drift.
    assert live["cluster.gpu"].status == "UP" and live["cluster.gpu"].drift is None
    # A second refresh does not pile another hung call onto the provider still answering.
    again = refresh(records, {"local": local, "aws": aws}, timeout_s=0.3)
    assert again["cluster.gpu"].status == "UP" and aws.hung == 1


def test_live_capacity_is_read_concurrently_and_a_hung_provider_offers_nothing() -> None:
    local = FakeProvider("local", capacity=[FreeCapacity("local", "local", None, 4, 16)])
    pool = FreeCapacity("kubernetes", "kubernetes", "ctx", 64, 512, "L4", 8)
    hung = Stalling("kubernetes", capacity=[pool])
    before = live_offerings({"local": local, "kubernetes": hung}, timeout_s=0.3)
    assert sorted(o.cloud for o in before) == ["kubernetes", "local"]
    hung.stalled.set()
    try:
        started = time.monotonic()
        offers = live_offerings({"local": local, "kubernetes": hung}, timeout_s=0.3)
        assert time.monotonic() - started < 5
        # What did answer is there; the hung cluster's GPUs are not offered on a guess.
        assert [(o.cloud, o.cpus) for o in offers] == [("local", 4)]
        assert hung.hung == 1
    finally:
        hung.release.set()


def test_drift_is_healed_on_one_provider_while_another_hangs(
    tmp_path: Path, skyform_home: Path, aws: Stalling
) -> None:
    big = FreeCapacity("local", "local", None, cpus=1e6, memory_gib=1e6)
    local = FakeProvider("local", capacity=[big])
    remote = Remote(tmp_path)
    commit = remote.commit(
        {"skyform.yaml": CONFIG, "clusters/box.yaml": cluster("box"), "clusters/gpu.yaml": GPU}
    )
    daemon = Daemon(
        Settings(
            repo=remote.url,
            home=skyform_home,
            lease_s=5.0,
            listen=("127.0.0.1", 0),
            observe_timeout_s=0.5,
            providers_for=lambda desired: {"local": local, "aws": aws},
        )
    )
    daemon.start()
    assert daemon.http is not None
    host, port = daemon.http.address
    try:
        wait_for(
            "the first commit to apply",
            lambda: daemon.status.get("last_applied_commit") == commit,
        )
        assert [h.address for h in local.resources()] == ["cluster.box"]
        assert [h.address for h in aws.resources()] == ["cluster.gpu"]
        gpu = aws.resources()[0].skyform_id
        aws_calls = len(aws.calls)

        aws.stalled.set()
        box = local.resources()[0]
        local.terminate(box)  # someone deletes it behind Skyform's back
        started = time.monotonic()

        def healed() -> bool:
            return [h.address for h in local.resources()] == ["cluster.box"]

        # Drift interval 1 s, observe timeout 0.5 s: a sync that waited for the hung provider
        # would never finish, so the heal arriving at all proves it is not waited on.
        wait_for("the local drift to be healed", healed, timeout=15)
        assert local.resources()[0].skyform_id != box.skyform_id
        assert time.monotonic() - started < 10

        # What the hung provider runs is untouched and still shows its recorded status.
        assert [h.skyform_id for h in aws.resources()] == [gpu]
        # Neither launched nor terminated; only its (answering) capacity was read.
        assert {c.verb for c in aws.calls[aws_calls:]} <= {"capacity"}
        assert aws.hung == 1  # one hung call, not one more per tick

        def shown() -> dict[str, str] | None:
            rows = daemon.status.get("resources") or []
            seen = {r["address"]: r["status"] for r in rows}
            return seen if seen.get("cluster.box") == "UP" else None

        seen = wait_for("the status to show both", shown)
        assert seen["cluster.gpu"] == "UP"
        text = http(f"http://{host}:{port}/metrics")[1].decode()
        assert metric(text, "skyform_drift_healed_total") >= 1
    finally:
        aws.release.set()
        daemon.stop()
