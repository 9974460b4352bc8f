"""skyform_drift_found_total counts a drift once: an alert-only drift seen again at every
interval is the same drift; once healed, the next one counts again."""

from __future__ import annotations

import re
from pathlib import Path

from applier.provider import FreeCapacity
from applier.providers.fake import FakeProvider
from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from tests.reconciler.daemon._support import Remote, cluster, config, http, metric, wait_for


def _drift_syncs(text: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^skyform_syncs_total\{[^}]*trigger="drift"[^}]*\} (\S+)$', text, re.M
        )
    )


def test_an_alerted_drift_counts_once_and_again_after_it_healed(
    tmp_path: Path, skyform_home: Path
) -> None:
    fake = FakeProvider("local", capacity=[FreeCapacity("local", "local", None, 64, 256)])
    remote = Remote(tmp_path)
    first = remote.commit(
        {
            "skyform.yaml": config(drift="1s", self_heal=False),
            "clusters/box.yaml": cluster("box"),
        }
    )
    daemon = Daemon(
        Settings(
            repo=remote.url,
            home=skyform_home,
            lease_s=5.0,
            listen=("127.0.0.1", 0),
            providers_for=lambda desired: {"local": fake},
        )
    )
    daemon.start()
    assert daemon.http is not None
    host, port = daemon.http.address

    def metrics() -> str:
        return str(http(f"http://{host}:{port}/metrics")[1].decode())

    def boxes() -> list[str]:
        return [h.skyform_id for h in fake.resources() if h.address == "cluster.box"]

    try:
        wait_for("the commit to apply", lambda: daemon.status.get("last_applied_commit") == first)
        fake.terminate(fake.resources()[0])  # deleted outside Skyform; self_heal is off
        wait_for("the drift to be found", lambda: metric(metrics(), "skyform_drift_found_total"))
        ticks = _drift_syncs(metrics())
        wait_for("three more drift intervals", lambda: _drift_syncs(metrics()) >= ticks + 3)
        text = metrics()
        assert metric(text, "skyform_drift_found_total") == 1  # the same drift, every interval
        assert metric(text, "skyform_drift_healed_total") == 0 and boxes() == []

        heal = remote.commit({"skyform.yaml": config(drift="1s", self_heal=True)})
        wait_for("the heal to apply", lambda: daemon.status.get("last_applied_commit") == heal)
        wait_for("the cluster to be back", boxes)
        assert metric(metrics(), "skyform_drift_found_total") == 1  # healed, not found anew

        fake.terminate(fake.resources()[0])  # a new drift after the heal counts again
        wait_for(
            "the second drift to be healed",
            lambda: metric(metrics(), "skyform_drift_healed_total") >= 2 and boxes(),
        )
        assert metric(metrics(), "skyform_drift_found_total") == 2
    finally:
        daemon.stop()
