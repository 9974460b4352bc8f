"""The service controller: real replicas (local provider) behind its load balancer, a killed
replica replaced, a rolling update that never drops a request, cancel leaving nothing behind;
autoscaling and failover against the fake provider with an injected clock; and the detached
process started through `common.start` with the example echo service.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.controllers.common import (
    ControllerSpec,
    controller_dir,
    is_running,
    read_status,
    request_cancel,
    start,
    wait_stopped,
    write_spec,
)
from applier.controllers.service_core import ServiceController
from applier.controllers.service_replicas import (
    DEFAULT_REPLICA_PORT,
    free_port,
    parse_replica_id,
    replica_port,
)
from applier.providers.fake import FakeProvider, PlaceRule
from applier.providers.local import LocalProvider
from applier.providers.local_node import read_json
from schema.loader import load_tasks
from schema.task import Task
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "repo-layout"

REPLICA_SERVER = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        env = os.environ
        reply = {"replica": env["SKYPILOT_SERVE_REPLICA_ID"], "version": env["VERSION"]}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def service_yaml(script: Path, version: int) -> str:
    return f"""
name: api
envs:
  VERSION: "{version}"
service:
  readiness_probe:
    path: /health
    initial_delay_seconds: 25
    timeout_seconds: 2
    endpoint_probe_interval_seconds: 1
  replicas: 2
  load_balancing_policy: round_robin
run: {sys.executable} {script}
"""


def make_spec(source: str, base_dir: Path, **kw: Any) -> ControllerSpec:
    values: dict[str, Any] = {
        "kind": "service",
        "address": "service.api",
        "skyform_id": uuid.uuid4().hex,
        "source_text": source,
        "source_file": "services/api.yaml",
        "base_dir": str(base_dir),
        "candidates": ({"cloud": "local", "cpus": 0.1, "memory_gib": 0.1},),
        "lb_port": free_port(),
        "poll_seconds": 0.2,
    }
    return ControllerSpec(**{**values, **kw})


def get(url: str, path: str = "/") -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        data = json.loads(body) if response.status == 200 else {"error": body.decode()}
        return response.status, data
    finally:
        conn.close()


def ready_ids(directory: Path, count: int) -> list[int] | None:
    """Ids of the READY replicas once there are `count` of them and nothing else live."""
    status = read_status(directory)
    live = [r for r in status.get("replicas", []) if r["handle"]]
    ready = [r["replica_id"] for r in live if r["status"] == "READY"]
    return ready if len(ready) == count == len(live) else None


def replica_pgid(home: Path, handle: dict[str, Any]) -> int:
    rec = read_json(home / "local" / handle["resource_id"] / "node-0" / "state" / "pid.json")
    assert rec is not None
    return int(rec["pgid"])


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies awaiting their reaper do not)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "skyform-home"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "replica.py"
    path.write_text(REPLICA_SERVER)
    return path


@pytest.fixture
def local(home: Path) -> Iterator[LocalProvider]:
    provider = LocalProvider(home, grace_s=1.0)
    yield provider
    for res in provider.observe():  # whatever a failed test left
        provider.terminate(res.handle)


Runner = Callable[[ControllerSpec], tuple[ServiceController, Path, threading.Thread]]


@pytest.fixture
def run_controller(home: Path, local: LocalProvider) -> Iterator[Runner]:
    """Runs a controller's loop in a thread, as its process would; stopped at teardown."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def run(spec: ControllerSpec) -> tuple[ServiceController, Path, threading.Thread]:
        directory = controller_dir(home, spec.address, spec.skyform_id)
        write_spec(directory, spec)
        controller = ServiceController(directory, providers={"local": local})
        stop = threading.Event()
        thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))
        return controller, directory, thread

    yield run
    for stop, thread in started:
        stop.set()
        thread.join(30)


# ---- real replicas, in-process controller ----------------------------------------------------


def test_replicas_serve_and_a_killed_replica_is_replaced(
    run_controller: Runner, script: Path, tmp_path: Path, home: Path
) -> None:
    spec = make_spec(service_yaml(script, 1), tmp_path)
    _, directory, _ = run_controller(spec)
    assert sorted(wait_for(lambda: ready_ids(directory, 2), "2 ready replicas")) == [1, 2]
    status = read_status(directory)
    assert status["status"] == "READY"
    assert status["endpoint"] == f"http://127.0.0.1:{spec.lb_port}"
    assert status["target_replicas"] == 2

    seen = {get(status["endpoint"])[1]["replica"] for _ in range(6)}
    assert seen == {"1", "2"}  # round robin reaches both replicas through the balancer

    victim = next(r for r in status["replicas"] if r["replica_id"] == 1)
    pgid = replica_pgid(home, victim["handle"])
    os.killpg(pgid, signal.SIGKILL)

    # Replica 3 replaces it; waiting for exactly this set fails the test if it never comes.
    wait_for(lambda: sorted(ready_ids(directory, 2) or []) == [2, 3], "replica 3 to replace 1")
    status = read_status(directory)
    dead = next(r for r in status["replicas"] if r["replica_id"] == 1)
    assert dead["status"] == "PREEMPTED" and dead["handle"] is None
    assert {get(status["endpoint"])[1]["replica"] for _ in range(6)} == {"2", "3"}


def poll_lb(url: str, stop: threading.Event, results: list[tuple[int, str]]) -> None:
    while not stop.is_set():
        try:
            code, data = get(url)
            results.append((code, data.get("version") or data.get("error", "")))
        except OSError as exc:
            results.append((0, repr(exc)))


def test_rolling_update_never_drops_a_request_and_cancel_leaves_nothing(
    run_controller: Runner, script: Path, tmp_path: Path, home: Path, local: LocalProvider
) -> None:
    spec = make_spec(service_yaml(script, 1), tmp_path)
    _, directory, thread = run_controller(spec)
    wait_for(lambda: ready_ids(directory, 2), "2 ready replicas")
    endpoint = read_status(directory)["endpoint"]

    results: list[tuple[int, str]] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_lb, args=(endpoint, stop, results), daemon=True)
    poller.start()
    try:
        wait_for(lambda: len(results) >= 5, "requests before the update")
        write_spec(
            directory, dataclasses.replace(spec, version=2, source_text=service_yaml(script, 2))
        )

        def only_v2() -> bool:
            status = read_status(directory)
            live = [r for r in status["replicas"] if r["handle"]]
            return (
                status["version"] == 2
                and bool(ready_ids(directory, 2))
                and all(r["version"] == 2 for r in live)
            )

        wait_for(only_v2, "only version-2 replicas, 2 of them ready")
        count = len(results)
        wait_for(lambda: len(results) >= count + 5, "requests after the update")
    finally:
        stop.set()
        poller.join(15)

    failures = [r for r in results if r[0] != 200]
    assert failures == []
    versions = [v for _, v in results]
    assert "1" in versions and versions[-5:] == ["2"] * 5
    owned = [parse_replica_id(spec.skyform_id, o.handle.skyform_id) for o in local.observe()]
    assert sorted(owned) == [(2, 3), (2, 4)]  # (version, replica id): the old ones are gone

    pgids = [
        replica_pgid(home, r["handle"]) for r in read_status(directory)["replicas"] if r["handle"]
    ]
    request_cancel(directory)
    thread.join(30)
    assert not thread.is_alive()
    status = read_status(directory)
    assert status["status"] == "SHUTDOWN"
    assert local.observe() == []
    assert [p.name for p in (home / "local").iterdir() if not p.name.startswith(".")] == []
    assert not any(group_alive(p) for p in pgids)
    assert port_closed(spec.lb_port or 0)


# ---- decisions against the fake provider, with an injected clock ------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fake_controller(
    home: Path,
    tmp_path: Path,
    source: str,
    candidates: tuple[dict[str, Any], ...],
    run_polls: int,
) -> tuple[ServiceController, FakeProvider, Clock]:
    spec = make_spec(source, tmp_path, candidates=candidates)
    directory = controller_dir(home, spec.address, spec.skyform_id)
    write_spec(directory, spec)
    fake = FakeProvider(run_polls=run_polls)
    clock = Clock()
    return ServiceController(directory, providers={"fake": fake}, clock=clock), fake, clock


AUTOSCALED = """
name: api
service:
  readiness_probe: /health
  replica_policy:
    min_replicas: 1
    max_replicas: 3
    target_qps_per_replica: 0.05
    upscale_delay_seconds: 0
    downscale_delay_seconds: 0
run: python3 server.py
"""


@pytest.fixture
def fake_service(
    home: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[ServiceController, FakeProvider, Clock]]]:
    made: list[ServiceController] = []

    def make(
        source: str,
        candidates: tuple[dict[str, Any], ...] = ({"cloud": "fake"},),
        run_polls: int = 10**9,  # replicas run until terminated or lost
    ) -> tuple[ServiceController, FakeProvider, Clock]:
        controller, fake, clock = fake_controller(home, tmp_path, source, candidates, run_polls)
        made.append(controller)
        controller.start()
        return controller, fake, clock

    yield make
    for controller in made:
        controller.shutdown()


def test_a_request_burst_scales_up_and_quiet_scales_down(
    fake_service: Callable[..., tuple[ServiceController, FakeProvider, Clock]],
) -> None:
    controller, fake, clock = fake_service(AUTOSCALED)
    controller.tick()
    assert len(fake.resources()) == 1
    clock.now += 21  # the next decision, with no traffic: the target stays
    controller.tick()
    assert len(fake.resources()) == 1

    assert controller.endpoint is not None
    for _ in range(12):  # 12 requests a minute at 0.05 qps per replica: 4, clipped to 3
        assert get(controller.endpoint)[0] == 503  # counted even with no replica ready
    clock.now += 21
    controller.tick()
    status = read_status(controller.directory)
    assert status["target_replicas"] == 3
    assert sorted(r["replica_id"] for r in status["replicas"]) == [1, 2, 3]
    assert len({h.skyform_id for h in fake.resources()}) == 3

    clock.now += 61  # the window empties: back to the minimum, the newest replicas go first
    controller.tick()
    [kept] = fake.resources()
    assert parse_replica_id(controller.spec.skyform_id, kept.skyform_id) == (1, 1)
    assert read_status(controller.directory)["target_replicas"] == 1


def test_failover_across_candidates_and_a_lost_replica_is_replaced(
    fake_service: Callable[..., tuple[ServiceController, FakeProvider, Clock]],
) -> None:
    candidates = ({"cloud": "fake", "region": "r1"}, {"cloud": "fake", "region": "r2"})
    controller, fake, clock = fake_service(AUTOSCALED, candidates)
    fake.fail_capacity(PlaceRule(region="r1"))
    controller.tick()
    [handle] = fake.resources()
    assert handle.placement.region == "r2"
    attempts = [(a["placement"], a["outcome"].split(":")[0]) for a in controller.attempts]
    assert attempts == [("fake/r1", "capacity"), ("fake/r2", "launched")]
    assert read_status(controller.directory)["attempts"][-1]["outcome"] == "launched"

    fake.lose_node(handle)
    clock.now += 1
    controller.tick()
    [replacement] = fake.resources()
    assert parse_replica_id(controller.spec.skyform_id, replacement.skyform_id) == (1, 2)
    replicas = read_status(controller.directory)["replicas"]
    assert [(r["replica_id"], r["status"]) for r in replicas] == [
        (1, "PREEMPTED"),
        (2, "STARTING"),
    ]


def test_no_room_anywhere_backs_off_and_says_so(
    fake_service: Callable[..., tuple[ServiceController, FakeProvider, Clock]],
) -> None:
    controller, fake, clock = fake_service(AUTOSCALED)
    fake.fail_capacity(PlaceRule(cloud="fake"), times=2)
    controller.tick()
    controller.tick()  # within the back-off: no second try
    assert fake.resources() == []
    assert len(controller.attempts) == 1
    status = read_status(controller.directory)
    assert status["status"] == "STARTING" and "could not be launched" in status["message"]
    clock.now += 1.5
    controller.tick()  # the back-off passed: tried again (and refused again)
    assert len(controller.attempts) == 2
    clock.now += 2.5
    controller.tick()
    assert len(fake.resources()) == 1
    assert read_status(controller.directory)["message"] is None


def test_a_new_version_whose_app_exits_halts_instead_of_relaunching(
    fake_service: Callable[..., tuple[ServiceController, FakeProvider, Clock]],
) -> None:
    controller, fake, clock = fake_service(AUTOSCALED, run_polls=1)
    fake.set_exit_codes("service.api", 1)  # the server exits with 1 before it was ever ready
    for _ in range(5):
        controller.tick()
        clock.now += 1
    launches = [c for c in fake.calls if c.verb == "launch"]
    assert len(launches) == 1
    status = read_status(controller.directory)
    assert status["status"] == "FAILED"
    assert "never became ready" in status["message"]
    assert [(r["replica_id"], r["status"]) for r in status["replicas"]] == [(1, "FAILED")]


# ---- the detached process --------------------------------------------------------------------


@pytest.fixture
def detached(home: Path, local: LocalProvider) -> Iterator[Callable[[ControllerSpec], Path]]:
    """Starts controller processes through `common.start`; any still running at teardown is
    cancelled (and killed if it does not stop), and whatever replicas remain are terminated."""
    directories: list[Path] = []

    def launch(spec: ControllerSpec) -> Path:
        directory = start(home, spec)
        directories.append(directory)
        return directory

    yield launch
    for directory in directories:
        if is_running(directory):
            request_cancel(directory)
            if not wait_stopped(directory, 30):
                rec = read_json(directory / "pid.json")
                if rec is not None:
                    os.kill(int(rec["pid"]), signal.SIGKILL)


def test_detached_controller_serves_the_example_and_cancel_cleans_up(
    detached: Callable[[ControllerSpec], Path], home: Path, local: LocalProvider
) -> None:
    source = (EXAMPLE / "services" / "echo-api.yaml").read_text()
    spec = make_spec(
        source, EXAMPLE, address="service.echo-api", source_file="services/echo-api.yaml"
    )
    directory = detached(spec)
    wait_for(lambda: ready_ids(directory, 2), "the example's 2 replicas to be ready")
    status = read_status(directory)
    code, body = get(status["endpoint"], "/hello")
    assert code == 200 and body["path"] == "/hello"
    assert status["status"] == "READY" and status["ready_replicas"] == 2
    pgids = [replica_pgid(home, r["handle"]) for r in status["replicas"] if r["handle"]]

    request_cancel(directory)
    assert wait_stopped(directory, 30)
    assert read_status(directory)["status"] == "SHUTDOWN"
    assert local.observe() == []
    assert not any(group_alive(p) for p in pgids)
    assert port_closed(spec.lb_port or 0)


def test_a_restarted_controller_adopts_its_replicas_on_the_same_port(
    detached: Callable[[ControllerSpec], Path], script: Path, tmp_path: Path, home: Path
) -> None:
    spec = make_spec(service_yaml(script, 1), tmp_path)
    directory = detached(spec)
    wait_for(lambda: ready_ids(directory, 2), "2 ready replicas")
    before = read_status(directory)["replicas"]
    rec = read_json(directory / "pid.json")
    assert rec is not None
    os.kill(int(rec["pid"]), signal.SIGKILL)  # a crash: no shutdown, replicas keep running
    wait_for(lambda: not is_running(directory), "the controller to die")
    assert not port_closed(before[0]["handle"]["ports"][0])

    restarted_at = time.time()
    detached(spec)

    def adopted() -> list[int] | None:
        fresh = read_status(directory).get("updated_at", 0) > restarted_at
        return ready_ids(directory, 2) if fresh else None  # not the dead one's last word

    assert sorted(wait_for(adopted, "the replicas to be adopted")) == [1, 2]
    after = read_status(directory)
    assert [r["handle"] for r in after["replicas"]] == [r["handle"] for r in before]
    assert after["next_replica_id"] == 3  # nothing was launched again
    assert {get(after["endpoint"])[1]["replica"] for _ in range(6)} == {"1", "2"}


def test_a_replica_port_is_free_here_and_the_declared_one_elsewhere() -> None:
    def task(yaml: str) -> Task:
        return load_tasks(yaml, "svc.yaml").tasks[0].task

    here = replica_port(task("service: {readiness_probe: /, ports: 8000}\nrun: x\n"), "local")
    with socket.socket() as s:
        s.bind(("127.0.0.1", here))  # free on this machine, whatever the task declares
    assert replica_port(task("service: {readiness_probe: /, ports: 8000}\nrun: x\n"), "aws") == 8000
    declared = task("resources: {ports: 9000}\nservice: {readiness_probe: /}\nrun: x\n")
    assert replica_port(declared, "gcp") == 9000
    bare = task("service: {readiness_probe: /}\nrun: x\n")
    assert replica_port(bare, "kubernetes") == DEFAULT_REPLICA_PORT
