"""The local provider with real processes: SkyPilot's environment, setup once per hash, workdir
and file mounts, failures, lost nodes, crash-safe launch, capacity, and leaving nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from applier.provider import (
    Handle,
    JobState,
    LaunchRequest,
    Placement,
    ResourceKind,
    ResourceStatus,
)
from applier.providers.local import LocalProvider
from applier.providers.local_machine import Gpu, LocalCaps, Machine, parse_nvidia_smi
from applier.providers.local_node import is_alive, proc_stat, read_json
from schema.errors import CapacityError, ProviderError
from schema.loader import load_tasks
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "skyform-home"


@pytest.fixture
def provider(home: Path) -> Iterator[LocalProvider]:
    provider = LocalProvider(home, grace_s=1.0)
    yield provider
    for res in provider.observe():
        provider.terminate(res.handle)


def request(
    yaml: str,
    base_dir: Path,
    address: str = "job.t",
    kind: ResourceKind = ResourceKind.JOB,
    num_nodes: int = 1,
    skyform_id: str | None = None,
    placement: Placement | None = None,
    ports: tuple[int, ...] = (),
    envs: dict[str, str] | None = None,
) -> LaunchRequest:
    return LaunchRequest(
        address=address,
        skyform_id=skyform_id or str(uuid.uuid4()),
        kind=kind,
        task=load_tasks(yaml, "test.yaml").tasks[0].task,
        placement=placement or Placement(cloud="local", cpus=0.1, memory_gib=0.1),
        num_nodes=num_nodes,
        ports=ports,
        base_dir=base_dir,
        envs=envs or {},
    )


def end_state(provider: LocalProvider, handle: Handle) -> JobState:
    def probe() -> JobState | None:
        state = provider.job_status(handle)
        return state if state.finished else None

    return wait_for(probe, f"{handle.address} to finish")


def node_pids(home: Path, handle: Handle) -> list[tuple[int, int]]:
    out = []
    for rank in range(handle.num_nodes):
        rec = read_json(home / "local" / handle.resource_id / f"node-{rank}" / "state" / "pid.json")
        if rec is not None:
            out.append((int(rec["pid"]), int(rec["start_time"])))
    return out


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


# ---- SkyPilot's environment ------------------------------------------------------------------


def test_two_nodes_get_skypilot_env_vars(provider: LocalProvider, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    yaml = f"""
envs: {{OUT: "{out}", GREETING: hello}}
secrets: {{TOKEN: s3cret}}
setup: {sys.executable} -c "{dump}" "$OUT/setup-$SKYPILOT_SETUP_NODE_RANK.json"
run: {sys.executable} -c "{dump}" "$OUT/run-$SKYPILOT_NODE_RANK.json"
"""
    handle = provider.launch(request(yaml, tmp_path, "job.envs", num_nodes=2))
    assert end_state(provider, handle) == JobState.SUCCEEDED

    runs = [json.loads((out / f"run-{r}.json").read_text()) for r in (0, 1)]
    assert [e["SKYPILOT_NODE_RANK"] for e in runs] == ["0", "1"]
    for env in runs:
        assert env["SKYPILOT_NUM_NODES"] == "2"
        assert env["SKYPILOT_NODE_IPS"].split("\n") == ["127.0.0.1", "127.0.0.1"]
        assert env["SKYPILOT_NUM_GPUS_PER_NODE"] == "0"
        assert env["SKYPILOT_TASK_ID"] == handle.task_id
        assert re.fullmatch(r"sky-managed-\d{4}(-\d\d){5}-\d{6}_envs_1-0", env["SKYPILOT_TASK_ID"])
        info = json.loads(env["SKYPILOT_CLUSTER_INFO"])
        assert set(info) == {"cluster_name", "cloud", "region", "zone"}
        assert env["GREETING"] == "hello" and env["TOKEN"] == "s3cret"
        assert Path(env["HOME"]).name == "home"
    assert runs[0]["HOME"] != runs[1]["HOME"]  # each node has its own ~
    setups = [json.loads((out / f"setup-{r}.json").read_text()) for r in (0, 1)]
    assert [e["SKYPILOT_SETUP_NODE_RANK"] for e in setups] == ["0", "1"]
    assert "SKYPILOT_NODE_RANK" not in setups[0]


def test_secrets_never_reach_the_disk(provider: LocalProvider, tmp_path: Path, home: Path) -> None:
    yaml = "secrets: {TOKEN: very-s3cret-value}\nrun: sleep 30\n"
    provider.launch(request(yaml, tmp_path))
    for path in home.rglob("*"):
        if path.is_file():
            assert b"very-s3cret-value" not in path.read_bytes(), path


def test_service_replica_gets_its_port(provider: LocalProvider, tmp_path: Path) -> None:
    yaml = f'run: echo "$PORT $SKYFORM_REPLICA_PORT $SKYPILOT_SERVE_REPLICA_ID" > {tmp_path}/port\n'
    req = request(yaml, tmp_path, "service.api", ResourceKind.SERVICE_REPLICA, ports=(18123,))
    handle = provider.launch(dataclasses.replace(req, replica_id=2))
    assert handle.endpoint == "127.0.0.1:18123"
    end_state(provider, handle)
    assert (tmp_path / "port").read_text().split() == ["18123", "18123", "2"]


# ---- setup, workdir, file mounts -------------------------------------------------------------


def test_setup_runs_once_per_cluster_and_setup_hash(
    provider: LocalProvider, tmp_path: Path
) -> None:
    count = tmp_path / "setups"
    yaml = f"setup: echo one >> {count}\nrun: echo ready\n"
    req = request(yaml, tmp_path, "cluster.dev", ResourceKind.CLUSTER)
    handle = provider.launch(req)
    assert end_state(provider, handle) == JobState.SUCCEEDED
    assert count.read_text() == "one\n"

    provider.stop(handle)
    provider.start(handle)
    assert provider.launch(req) == handle  # same spec: adopted, setup not re-run
    assert count.read_text() == "one\n"

    changed = dataclasses.replace(
        req, task=load_tasks(yaml.replace("one", "two"), "t.yaml").tasks[0].task
    )
    provider.launch(changed)
    assert count.read_text() == "one\ntwo\n"
    [res] = provider.observe()
    assert res.status == ResourceStatus.UP and all(n.alive for n in res.nodes)


def test_workdir_and_file_mounts_are_copied_into_the_node(
    provider: LocalProvider, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "app" / "sub").mkdir(parents=True)
    (repo / "app" / "a.txt").write_text("from-workdir\n")
    (repo / "app" / "sub" / "b.txt").write_text("nested\n")
    (repo / "m.txt").write_text("mounted\n")
    yaml = (
        "workdir: app\n"
        "file_mounts: {~/data/m.txt: ./m.txt}\n"
        "run: cat a.txt sub/b.txt ~/data/m.txt; pwd\n"
    )
    handle = provider.launch(request(yaml, repo))
    assert end_state(provider, handle) == JobState.SUCCEEDED

    [run_log] = [f.path for f in provider.log_paths(handle) if f.stage == "run"]
    lines = run_log.read_text().splitlines()
    assert lines[:3] == ["from-workdir", "nested", "mounted"]
    assert lines[3].endswith("/node-0/home/sky_workdir")
    assert sorted(p.name for p in (repo / "app").iterdir()) == ["a.txt", "sub"]  # untouched


@pytest.mark.parametrize(
    "mounts",
    [
        "{/data: s3://bucket/x}",
        "{~/d: {source: gs://b}}",
        "{/abs/dest: ./m.txt}",
        "{~/x: ./missing}",
    ],
)
def test_unsupported_file_mounts_are_refused_before_anything_is_created(
    provider: LocalProvider, tmp_path: Path, home: Path, mounts: str
) -> None:
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ProviderError, match="file_mounts"):
        provider.launch(request(f"file_mounts: {mounts}\nrun: echo hi\n", tmp_path))
    assert provider.observe() == []


def test_missing_env_value_is_refused(provider: LocalProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="NEEDED"):
        provider.launch(request("envs: {NEEDED: null}\nrun: echo $NEEDED\n", tmp_path))
    req = request("envs: {NEEDED: null}\nrun: echo $NEEDED\n", tmp_path, envs={"NEEDED": "given"})
    assert end_state(provider, provider.launch(req)) == JobState.SUCCEEDED


# ---- failures and lost nodes -----------------------------------------------------------------


def test_failed_setup_on_one_node_starts_run_nowhere(
    provider: LocalProvider, tmp_path: Path
) -> None:
    yaml = (
        'setup: test "$SKYPILOT_SETUP_NODE_RANK" = 0\n'
        f"run: touch {tmp_path}/ran-$SKYPILOT_NODE_RANK\n"
    )
    handle = provider.launch(request(yaml, tmp_path, num_nodes=2))
    assert end_state(provider, handle) == JobState.FAILED_SETUP
    assert not list(tmp_path.glob("ran-*"))
    [res] = provider.observe()
    assert res.nodes[1].exit_code == 1 and res.nodes[1].failed_stage == "setup"


def test_one_failing_node_fails_the_job(provider: LocalProvider, tmp_path: Path) -> None:
    handle = provider.launch(request('run: exit "$SKYPILOT_NODE_RANK"\n', tmp_path, num_nodes=2))
    assert end_state(provider, handle) == JobState.FAILED
    [res] = provider.observe()
    assert [(n.exit_code, n.failed_stage) for n in res.nodes] == [(0, None), (1, "run")]


def test_kill_9_of_one_nodes_process_group_is_node_lost(
    provider: LocalProvider, tmp_path: Path, home: Path
) -> None:
    handle = provider.launch(request("run: sleep 30\n", tmp_path, num_nodes=2))
    wait_for(lambda: provider.job_status(handle) == JobState.RUNNING, "the run to start")
    (pid1, _) = node_pids(home, handle)[1]
    os.killpg(pid1, signal.SIGKILL)

    assert end_state(provider, handle) == JobState.NODE_LOST
    [res] = provider.observe()
    assert res.status == ResourceStatus.DEGRADED
    assert [n.alive for n in res.nodes] == [True, False]


def test_terminate_leaves_no_process_and_no_directory(
    provider: LocalProvider, tmp_path: Path, home: Path
) -> None:
    yaml = "setup: sleep 0\nrun: sleep 30 & sleep 30\n"  # a background child too
    handle = provider.launch(
        request(yaml, tmp_path, "cluster.c", ResourceKind.CLUSTER, num_nodes=2)
    )
    wait_for(lambda: provider.job_status(handle) == JobState.RUNNING, "the run to start")
    pids = node_pids(home, handle)
    assert len(pids) == 2 and all(is_alive(p, s) for p, s in pids)

    provider.terminate(handle)

    assert all(group_members(pid) == [] for pid, _ in pids)
    assert sorted(p.name for p in (home / "local").iterdir()) == [".lock"]
    assert provider.observe() == []


def test_stop_kills_the_nodes_but_keeps_their_files(
    provider: LocalProvider, tmp_path: Path, home: Path
) -> None:
    handle = provider.launch(request("run: echo hi\n", tmp_path, "cluster.c", ResourceKind.CLUSTER))
    end_state(provider, handle)
    pids = node_pids(home, handle)
    provider.stop(handle)
    assert all(proc_stat(p) is None or not is_alive(p, s) for p, s in pids)
    assert (home / "local" / handle.resource_id / "node-0" / "run.log").read_text() == "hi\n"
    [res] = provider.observe()
    assert res.status == ResourceStatus.STOPPED and res.job == JobState.SUCCEEDED

    provider.start(handle)
    assert all(n.alive for n in provider.observe()[0].nodes)


def test_run_executes_on_every_node_and_returns_the_first_failure(
    provider: LocalProvider, tmp_path: Path
) -> None:
    handle = provider.launch(
        request("run: echo up\n", tmp_path, "cluster.c", ResourceKind.CLUSTER, num_nodes=2)
    )
    assert provider.run(handle, 'echo "exec on $SKYPILOT_NODE_RANK"') == 0
    assert provider.run(handle, "exit $((SKYPILOT_NODE_RANK + 4))") == 4
    assert provider.run(handle, "exit 7", node=1) == 7
    execs = {f.rank: f.path.read_text() for f in provider.log_paths(handle) if f.stage == "exec"}
    assert execs == {0: "exec on 0\n", 1: "exec on 1\n"}
    with pytest.raises(ProviderError):
        provider.run(handle, "true", node=2)


# ---- crash safety ----------------------------------------------------------------------------

_LAUNCH_IN_CHILD = """
import sys, uuid
from pathlib import Path
from applier.provider import LaunchRequest, Placement, ResourceKind
from applier.providers.local import LocalProvider
from schema.loader import load_tasks
task = load_tasks(sys.argv[3], "t.yaml").tasks[0].task
req = LaunchRequest(address="job.crash", skyform_id=sys.argv[2], kind=ResourceKind.JOB, task=task,
    placement=Placement(cloud="local", cpus=0.1, memory_gib=0.1), num_nodes=int(sys.argv[5]),
    base_dir=Path(sys.argv[4]))
provider = LocalProvider(Path(sys.argv[1]))
print("launching", flush=True)
provider.launch(req)
"""


def _launch_in_child(
    home: Path, skyform_id: str, yaml: str, base: Path, num_nodes: int
) -> subprocess.Popen[bytes]:
    """A separate Skyform process launching; it prints "launching" just before `launch`."""
    args = [sys.executable, "-c", _LAUNCH_IN_CHILD, str(home), skyform_id, yaml, str(base)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*args, str(num_nodes)], cwd=ROOT, env=env, stdout=subprocess.PIPE)


def test_jobs_outlive_the_process_that_launched_them(
    provider: LocalProvider, tmp_path: Path, home: Path
) -> None:
    sid = str(uuid.uuid4())
    child = _launch_in_child(home, sid, "run: sleep 30\n", tmp_path, num_nodes=2)
    child.communicate(timeout=20)
    assert child.returncode == 0

    [res] = provider.observe()
    assert res.handle.skyform_id == sid and res.status == ResourceStatus.UP
    before = node_pids(home, res.handle)
    again = provider.launch(
        request("run: sleep 30\n", tmp_path, "job.crash", num_nodes=2, skyform_id=sid)
    )
    assert again == res.handle and node_pids(home, again) == before  # adopted, nothing new


def test_a_launch_that_failed_mid_way_is_completed_by_the_next_one(
    provider: LocalProvider, tmp_path: Path, home: Path
) -> None:
    (tmp_path / "app").mkdir()
    fifo = tmp_path / "app" / "a-pipe"
    os.mkfifo(fifo)  # cannot be copied: the launch fails after recording, before any node
    req = request("workdir: app\nrun: sleep 30\n", tmp_path, num_nodes=2)
    with pytest.raises(ProviderError, match="a-pipe"):
        provider.launch(req)
    [res] = provider.observe()
    assert res.status == ResourceStatus.LAUNCHING and res.job == JobState.PENDING

    fifo.unlink()
    handle = provider.launch(req)
    assert handle == res.handle
    wait_for(lambda: provider.job_status(handle) == JobState.RUNNING, "the run to start")
    assert supervisors(home) == {0: 1, 1: 1}


def supervisors(home: Path) -> dict[int, int]:
    """How many live supervisor processes each node directory has (a duplicate shows as 2)."""
    counts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[2].endswith(b"local_node.py") and str(home).encode() in argv[3]:
            rank = int(argv[3].rsplit(b"node-", 1)[1])
            counts[rank] = counts.get(rank, 0) + 1
    return counts


@pytest.mark.parametrize("delay_ms", [0, 15, 30, 45, 60, 90, 120])
def test_kill_9_of_a_launch_at_any_point_then_relaunch_has_no_duplicates(
    provider: LocalProvider, tmp_path: Path, home: Path, delay_ms: int
) -> None:
    sid = str(uuid.uuid4())
    yaml = "setup: sleep 0.2\nrun: sleep 30\n"
    child = _launch_in_child(home, sid, yaml, tmp_path, num_nodes=3)
    assert child.stdout is not None and child.stdout.readline() == b"launching\n"
    time.sleep(delay_ms / 1000)  # where the kill lands is the parameter, not an assertion
    child.send_signal(signal.SIGKILL)
    child.wait()

    req = request(yaml, tmp_path, "job.crash", num_nodes=3, skyform_id=sid)
    handle = provider.launch(req)
    wait_for(lambda: len(supervisors(home)) == 3, "every node's supervisor")
    assert supervisors(home) == {0: 1, 1: 1, 2: 1}
    assert [r.handle for r in provider.observe()] == [handle]
    provider.terminate(handle)
    assert supervisors(home) == {}


# ---- capacity --------------------------------------------------------------------------------


def test_capacity_is_the_machine_within_caps(tmp_path: Path) -> None:
    machine = Machine(cpus=8, memory_gib=32, gpus=(Gpu("L4", 23034), Gpu("L4", 23034)))
    [free] = LocalProvider(tmp_path, LocalCaps(cpus=4, gpus=1), machine=machine).capacity()
    assert (free.cpus, free.memory_gib, free.accelerator, free.accelerator_count) == (
        4,
        32,
        "L4",
        1,
    )
    [real] = LocalProvider(tmp_path).capacity()
    assert real.cpus == len(os.sched_getaffinity(0)) and real.memory_gib > 0


def test_gpus_are_counted_and_given_to_the_run(tmp_path: Path) -> None:
    machine = Machine(cpus=4, memory_gib=8, gpus=(Gpu("L4", 23034),))
    provider = LocalProvider(tmp_path / "home", machine=machine, grace_s=1.0)
    gpu = Placement(cloud="local", accelerator="L4", accelerator_count=1, cpus=0.1, memory_gib=0.1)
    try:
        handle = provider.launch(
            request("run: echo $SKYPILOT_NUM_GPUS_PER_NODE; sleep 30\n", tmp_path, placement=gpu)
        )
        with pytest.raises(CapacityError, match="L4"):
            provider.launch(request("run: echo hi\n", tmp_path, "job.b", placement=gpu))
        h100 = Placement(cloud="local", accelerator="H100", accelerator_count=1, cpus=0.1)
        with pytest.raises(CapacityError, match="H100"):
            provider.launch(request("run: echo hi\n", tmp_path, "job.c", placement=h100))
        run_log = tmp_path / "home" / "local" / handle.resource_id / "node-0" / "run.log"
        assert wait_for(lambda: run_log.exists() and run_log.read_text(), "output") == "1\n"
    finally:
        for res in provider.observe():
            provider.terminate(res.handle)


def test_nvidia_smi_names_become_skypilot_accelerator_names() -> None:
    text = (
        "NVIDIA H100 80GB HBM3, 81559 MiB\n"
        "NVIDIA A100-SXM4-80GB, 81920 MiB\n"
        "NVIDIA A100-SXM4-40GB, 40960 MiB\n"
        "Tesla T4, 15360 MiB\n"
        "NVIDIA L4, 23034 MiB\n"
        "NVIDIA GeForce RTX 4090, 24564 MiB\n"
    )
    names = [g.name for g in parse_nvidia_smi(text)]
    assert names == ["H100", "A100-80GB", "A100", "T4", "L4", "RTX4090"]
