"""The fake clouds the AWS and GCP providers are tested against, behind one interface: moto (with
injected faults) and the stdlib fake GCE, with an sshd on 127.0.0.1 standing in for every
instance. A `World` makes providers whose nodes all resolve to that sshd, and changes the fake
cloud's instances the way a console user, the cloud itself, or time would."""

from __future__ import annotations

import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest

from applier.provider import Handle, JobState, LaunchRequest, Placement, Provider, ResourceKind
from applier.providers import cloud_nodes, gcp_compute, ssh
from applier.providers.aws import AwsProvider
from applier.providers.gcp import GcpProvider
from applier.providers.ssh_provider import SshNodesProvider
from planner.diff import PlanInputs, make_plan
from planner.plan import Plan
from schema.loader import load_tasks
from schema.repo import DesiredState, load_repo
from state import Store
from tests.aws_support import sshd as sshd_support
from tests.aws_support.fake_ec2 import FakeEc2
from tests.gcp_support.fake_gce import FakeGce
from tests.planner.plan_helpers import MACHINE, catalog

IMAGE = "ami-0123456789abcdef0"  # moto does not validate images
PROJECT = "skyform-test"
AWS_REGIONS = ("us-east-1", "us-west-2")
SPOT_AZS = ("use1-az6", "use1-az1")  # AWS zone ids: us-east-1a and -b in moto
ZONES = ("us-central1-a", "us-central1-b")


class World(ABC):
    """One fake cloud, and providers against it whose nodes are the test sshd (`base` holds
    their homes and the nodes' directories)."""

    name: ClassVar[str]
    fake_fixture: ClassVar[str]  # the session fixture that serves the fake cloud
    placement: ClassVar[Placement]  # on demand, somewhere the fake takes it
    spot: ClassVar[tuple[Placement, ...]]  # two spot placements in one region

    def __init__(self, fake: Any, key: tuple[Path, str], sshd_address: str, base: Path) -> None:
        self.fake = fake
        self.key = key
        self.base = base
        self.nodes_root = base / "nodes"
        self.node_settings: dict[str, Any] = {
            "ssh_user": "root",
            "ssh_host_override": sshd_address,
            "remote_root": str(self.nodes_root),
            "poll_s": 0.05,
            "boot_timeout_s": 20,
            "ssh_timeout_s": 20,
        }
        self._made = 0

    @property
    @abstractmethod
    def env(self) -> dict[str, str]:
        """The variables that point the cloud's SDK at the fake."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The provider settings this cloud needs besides the nodes' (regions, image, ...)."""

    @abstractmethod
    def _new(self, home: Path, settings: dict[str, Any]) -> SshNodesProvider[Any]: ...

    def enter(self, mp: pytest.MonkeyPatch) -> None:
        """A clean fake, with the SDK pointed at it through its ordinary environment."""
        self.fake.reset()
        for name, value in self.env.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv(ssh.OVERRIDE_ENV, raising=False)

    def home(self, home: Path | None = None) -> Path:
        """A Skyform home holding the session's client key (the one the sshd authorizes)."""
        home = home or self.base / f"home-{self._made}"
        self._made += 1
        (home / "ssh").mkdir(parents=True, exist_ok=True)
        for src in (self.key[0], self.key[0].with_name(self.key[0].name + ".pub")):
            shutil.copy2(src, home / "ssh" / src.name)
        return home

    def provider(self, home: Path | None = None, **settings: Any) -> Any:
        """A provider over the fake (typed Any: each cloud's tests use its own provider's API)."""
        home = self.home(home)
        return self._new(home, {**self.node_settings, **self.settings(), **settings})

    def cleanup(self) -> None:
        sshd_support.kill_node_processes(self.nodes_root)

    # ---- the instances, as the cloud's own API shows them ----------------------------------

    @abstractmethod
    def live(self) -> list[dict[str, Any]]:
        """Every instance not (yet) deleted."""

    @abstractmethod
    def marks(self, handle: Handle) -> list[dict[str, str]]:
        """The tags (AWS) or labels (GCP) of each of the handle's instances."""

    @abstractmethod
    def mark_writes(self) -> int:
        """How many calls so far wrote or removed tags (AWS) or labels (GCP)."""

    def activity(self, handle: Handle) -> list[str]:
        """The activity stamp of each instance that has one."""
        return [
            m[cloud_nodes.ACTIVITY_KEY] for m in self.marks(handle) if cloud_nodes.ACTIVITY_KEY in m
        ]

    # ---- what happens to instances outside Skyform ------------------------------------------

    @abstractmethod
    def kill(self, handle: Handle) -> None:
        """Someone deletes the (on-demand) instances from the console."""

    @abstractmethod
    def preempt(self, handle: Handle) -> None:
        """The cloud takes the spot instances back."""

    @abstractmethod
    def stop_node(self, handle: Handle, rank: int, stopped: bool = True) -> None:
        """One instance is stopped (or started again) from the console."""

    @abstractmethod
    def age(self, handle: Handle, seconds: float) -> None:
        """The instances were launched `seconds` earlier than they were."""

    @abstractmethod
    def clear_activity(self, handle: Handle) -> None:
        """Forget every activity stamp on the handle's instances."""


class AwsWorld(World):
    name, fake_fixture = "aws", "fake_ec2"
    placement = Placement("aws", "us-east-1", None, "m6i.large", cpus=2.0, memory_gib=8.0)
    spot = tuple(Placement("aws", "us-east-1", z, "m6i.large", use_spot=True) for z in SPOT_AZS)
    fake: FakeEc2

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.fake.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }

    def settings(self) -> dict[str, Any]:
        return {"regions": ["us-east-1"], "image_id": IMAGE}

    def _new(self, home: Path, settings: dict[str, Any]) -> AwsProvider:
        return AwsProvider(home, settings)

    def client(self, region: str = "us-east-1") -> Any:
        return boto3.client(
            "ec2",
            region_name=region,
            endpoint_url=self.fake.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def live(self) -> list[dict[str, Any]]:
        out = []
        for region in AWS_REGIONS:
            found = self.client(region).describe_instances()["Reservations"]
            out += [i for r in found for i in r["Instances"] if i["State"]["Name"] != "terminated"]
        return out

    def zone_names(self) -> dict[str, str]:
        """Zone id (the catalog's) -> zone name, in every region the tests use."""
        out: dict[str, str] = {}
        for region in AWS_REGIONS:
            zones = self.client(region).describe_availability_zones()["AvailabilityZones"]
            out |= {z["ZoneId"]: z["ZoneName"] for z in zones}
        return out

    def _ids(self, handle: Handle) -> list[str]:
        return handle.resource_id.split(",")

    def marks(self, handle: Handle) -> list[dict[str, str]]:
        found = self.client().describe_instances(InstanceIds=self._ids(handle))["Reservations"]
        tags = [i.get("Tags") or [] for r in found for i in r["Instances"]]
        return [{t["Key"]: t["Value"] for t in each} for each in tags]

    def mark_writes(self) -> int:
        counts = self.fake.faults.counts
        return counts["CreateTags"] + counts["DeleteTags"]

    def kill(self, handle: Handle) -> None:
        self.client().terminate_instances(InstanceIds=self._ids(handle))

    def preempt(self, handle: Handle) -> None:
        for instance_id in self._ids(handle):
            self.fake.reclaim_spot("us-east-1", instance_id)

    def stop_node(self, handle: Handle, rank: int, stopped: bool = True) -> None:
        ids = [self._ids(handle)[rank]]
        if stopped:
            self.client().stop_instances(InstanceIds=ids)
        else:
            self.client().start_instances(InstanceIds=ids)

    def age(self, handle: Handle, seconds: float) -> None:
        for instance_id in self._ids(handle):
            self.fake.age("us-east-1", instance_id, seconds)

    def clear_activity(self, handle: Handle) -> None:
        gone = [{"Key": cloud_nodes.ACTIVITY_KEY}]
        self.client().delete_tags(Resources=self._ids(handle), Tags=gone)


class GcpWorld(World):
    name, fake_fixture = "gcp", "fake_gce"
    placement = Placement("gcp", "us-central1", "us-central1-a", "n4-standard-2", cpus=2.0)
    spot = tuple(Placement("gcp", "us-central1", z, "n4-standard-2", use_spot=True) for z in ZONES)
    fake: FakeGce

    @property
    def env(self) -> dict[str, str]:
        return {gcp_compute.ENDPOINT_ENV: self.fake.endpoint, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def settings(self) -> dict[str, Any]:
        return {"regions": ["us-central1"], "operation_timeout_s": 20}

    def _new(self, home: Path, settings: dict[str, Any]) -> GcpProvider:
        return GcpProvider(home, settings)

    def live(self) -> list[dict[str, Any]]:
        return self.fake.live()

    def _names(self, handle: Handle) -> list[tuple[str, str]]:
        return [(z, n) for z, _, n in (p.partition("/") for p in handle.resource_id.split(","))]

    def marks(self, handle: Handle) -> list[dict[str, str]]:
        names = {n for _, n in self._names(handle)}
        return [dict(i.get("labels") or {}) for i in self.fake.live() if i["name"] in names]

    def mark_writes(self) -> int:
        counts = self.fake.state.counts
        return sum(n for key, n in counts.items() if key.endswith("/setLabels"))

    def kill(self, handle: Handle) -> None:
        for zone, name in self._names(handle):
            self.fake.preempt(zone, name, delete=True)

    def preempt(self, handle: Handle) -> None:
        self.kill(handle)  # Skyform's spot instances are deleted on preemption

    def stop_node(self, handle: Handle, rank: int, stopped: bool = True) -> None:
        zone, name = self._names(handle)[rank]
        self.fake.set_status(zone, name, "TERMINATED" if stopped else "RUNNING")

    def age(self, handle: Handle, seconds: float) -> None:
        for zone, name in self._names(handle):
            self.fake.age(zone, name, seconds)

    def clear_activity(self, handle: Handle) -> None:
        for zone, name in self._names(handle):
            self.fake.drop_label(zone, name, cloud_nodes.ACTIVITY_KEY)


# ---- helpers the tests of both clouds use ---------------------------------------------------


def request(yaml: str, placement: Placement, **fields: Any) -> LaunchRequest:
    """A job request for `yaml` (as many nodes as it asks for); `fields` override."""
    task = load_tasks(yaml, "t.yaml").tasks[0].task
    values: dict[str, Any] = {
        "address": "job.t",
        "skyform_id": uuid.uuid4().hex,
        "kind": ResourceKind.JOB,
        "task": task,
        "placement": placement,
        "num_nodes": task.num_nodes,
    }
    return LaunchRequest(**{**values, **fields})


def wait_finished(provider: Provider, handle: Handle, timeout: float = 30) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = provider.job_status(handle)
        if state.finished:
            return state
        time.sleep(0.1)
    raise AssertionError(f"the job did not finish within {timeout}s")


def run_log(provider: Provider, handle: Handle) -> str:
    """The run's log (node 0) once the run ended (or 30 s passed)."""
    deadline = time.monotonic() + 30
    while not provider.job_status(handle).finished and time.monotonic() < deadline:
        time.sleep(0.1)
    return next(f.path for f in provider.log_paths(handle) if f.stage == "run").read_text()


def logs_by_node(provider: Provider, handle: Handle) -> dict[tuple[int, str], str]:
    return {(f.rank, f.stage): f.path.read_text() for f in provider.log_paths(handle)}


TWO_NODES = (
    "num_nodes: 2\nworkdir: src\nenvs: {GREETING: hello}\n"
    "setup: echo setup-on-$SKYPILOT_SETUP_NODE_RANK\n"
    "run: |\n"
    "  echo rank=$SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES $GREETING\n"
    '  echo ips=$(echo "$SKYPILOT_NODE_IPS" | wc -l) gpus=$SKYPILOT_NUM_GPUS_PER_NODE\n'
    "  echo $SKYPILOT_CLUSTER_INFO task=$SKYPILOT_TASK_ID\n"
    "  cat data.txt\n"
)


def two_node_run(provider: Provider, req: LaunchRequest, cloud_label: str) -> Handle:
    """Launch TWO_NODES (`req`'s task, with a `src/data.txt` under its base dir) and check
    that setup and run ran on both nodes over SSH with SkyPilot's variables and the workdir."""
    src = req.base_dir / "src"
    src.mkdir()
    (src / "data.txt").write_text("from-the-workdir\n")
    handle = provider.launch(req)
    assert wait_finished(provider, handle) == JobState.SUCCEEDED
    logs = logs_by_node(provider, handle)
    for rank in (0, 1):
        assert f"setup-on-{rank}" in logs[(rank, "setup")]
        run = logs[(rank, "run")]
        assert f"rank={rank} of 2 hello" in run
        assert "ips=2 gpus=0" in run and f'"cloud": "{cloud_label}"' in run
        assert f"task={handle.task_id}" in run and "from-the-workdir" in run
    return handle


def exec_then_terminate(provider: Provider, handle: Handle, world: World) -> None:
    """`run` on node 1 lands in its exec log; terminate leaves nothing, seen or billed."""
    assert provider.run(handle, "echo exec-$SKYPILOT_NODE_RANK", node=1) == 0
    exec_log = next(f for f in provider.log_paths(handle) if f.stage == "exec")
    assert "exec-1" in exec_log.path.read_text()
    provider.terminate(handle)
    assert world.live() == [] and provider.observe() == []


def plan_for(root: Path, store: Store) -> tuple[DesiredState, Plan]:
    """The repo's plan against an empty cloud, with the test catalog."""
    desired = load_repo(root)
    meta = store.meta()
    inputs = PlanInputs(
        desired=desired,
        observed={},
        catalog=catalog(),
        offerings=MACHINE,
        lineage=meta.lineage,
        serial=meta.serial,
    )
    return desired, make_plan(inputs)


def only(items: Iterable[Any]) -> Any:
    [item] = list(items)
    return item
