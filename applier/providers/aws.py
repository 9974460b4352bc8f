"""The `aws` provider: EC2 instances (on-demand or spot) tagged with the resource's address and
Skyform id, found again by one DescribeInstances per region; setup and run over SSH
(`cloud_nodes`). boto3 is imported here and in `aws_ec2` only.

- A placement with a zone (a catalog zone id such as `use1-az4`) launches there; one without
  tries the region's zones in order. Capacity errors become CapacityError (the applier fails
  over and blocks the place), quota errors CapacityError with the fix, throttling TransientError.
- Preemption: a spot instance terminated by AWS (state reason Server.SpotInstanceTermination) or
  gone altogether makes the run PREEMPTED; an on-demand instance lost outside Skyform NODE_LOST.
- Instances Skyform terminates are remembered under `<home>/aws/gone/` and tagged, since EC2
  keeps listing terminated instances for a while.
- Settings (skyform.yaml / provider settings): `regions`, `image_id`, `ssh_user` (ubuntu),
  `remote_root`, `ssh_host_override` (tests only, see `applier.providers.ssh`),
  `boot_timeout_s`, `ssh_timeout_s`, `poll_s`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from applier.provider import (
    FreeCapacity,
    Handle,
    LaunchRequest,
    ObservedResource,
    Placement,
    ResourceKind,
    Selector,
)
from applier.providers import aws_ec2, cloud_nodes, ssh, ssh_node
from applier.providers import local_files as files
from applier.providers.aws_instances import Instances, group_by_id
from applier.providers.ssh_provider import SshNodesProvider
from schema.errors import CapacityError, ProviderError

DEFAULT_REGION = "us-east-1"


class AwsProvider(SshNodesProvider[Instances]):
    """See the module docstring. Built by `from_settings`; `client` makes one region's client."""

    name = "aws"
    _cloud_label = "AWS"

    def __init__(
        self,
        home: Path,
        settings: Mapping[str, Any],
        client: Callable[[str], Any] = aws_ec2.make_client,
    ) -> None:
        self._home = home
        self._root = home / "aws"
        self._settings = dict(settings)
        self._client = client
        self._regions: dict[str, aws_ec2.Region] = {}
        self._lock = threading.Lock()
        self._boot_timeout = float(settings.get("boot_timeout_s", 600.0))
        self._ssh_timeout = float(settings.get("ssh_timeout_s", 300.0))
        self._poll = float(settings.get("poll_s", 2.0))

    # ---- regions --------------------------------------------------------------------------

    def region(self, name: str) -> aws_ec2.Region:
        with self._lock:
            if name not in self._regions:
                self._regions[name] = aws_ec2.Region(name, self._client(name))
            return self._regions[name]

    def _known_regions(self) -> list[str]:
        """The configured regions and every region Skyform launched in from this home."""
        try:
            used = json.loads((self._root / "regions.json").read_text())
        except (FileNotFoundError, ValueError):
            used = []
        configured = list(self._settings.get("regions") or [])
        return list(dict.fromkeys([*configured, *used])) or [DEFAULT_REGION]

    def _remember_region(self, name: str) -> None:
        with self._lock:
            regions = self._known_regions()
            if name in regions and (self._root / "regions.json").exists():
                return
            self._root.mkdir(parents=True, exist_ok=True)
            tmp = self._root / f".regions.{threading.get_ident()}"
            tmp.write_text(json.dumps(sorted({*regions, name})))
            tmp.replace(self._root / "regions.json")

    # ---- launch ---------------------------------------------------------------------------

    def capacity(self) -> list[FreeCapacity]:
        return []  # clouds are sized by the catalog; stockouts show up at launch

    def launch(self, req: LaunchRequest) -> Handle:
        self._validate(req)
        region = self.region(req.placement.region or DEFAULT_REGION)
        found = region.owned(req.skyform_id, None)
        group = group_by_id(found, self._gone()).get(req.skyform_id)
        created = group is None or not group.alive_or_pending()
        if created:
            self._remember_region(region.name)
            group = Instances(self._create(region, req))
        assert group is not None
        try:
            group = self._wait_running(req, group, lambda g: Instances(region.by_ids(g.ids)))
            handle = self._handle(group)
            # Adopting: the node drivers notice they were started already and are left alone.
            self._start_runs(replace(req, task_id=handle.task_id), group)
        except BaseException:
            if created:  # leave nothing behind; an adopted resource is not ours to end here
                self._terminate_ids(region, group.ids, req.skyform_id)
            raise
        return handle

    def _validate(self, req: LaunchRequest) -> None:
        if req.placement.cloud != "aws":
            raise ProviderError(f"{req.address}: placement {req.placement.describe()} is not aws")
        if not req.placement.instance_type:
            raise ProviderError(f"{req.address}: an aws placement needs an instance type")
        if req.num_nodes < 1:
            raise ProviderError(f"{req.address}: num_nodes must be at least 1")
        ssh_node.check_task(req.address, req.task)
        files.base_env(req)  # a missing env value fails before anything is created

    def _create(self, region: aws_ec2.Region, req: LaunchRequest) -> list[dict[str, Any]]:
        """RunInstances in the placement's zone, or in each zone of the region in turn."""
        p = req.placement
        zones = [region.zone_name(p.zone)] if p.zone else sorted(region.zones().values())
        params = self._run_params(region, req)
        errors = []
        for zone in zones:
            token = hashlib.sha256(f"{req.skyform_id}/{zone}".encode()).hexdigest()[:64]
            try:
                out = region.call(
                    "run_instances",
                    p,
                    Placement={"AvailabilityZone": zone},
                    ClientToken=token,  # a retried call never starts a second set
                    **params,
                )
            except CapacityError as exc:
                if "quota" in str(exc):
                    raise  # a quota is regional: other zones cannot help
                errors.append(f"{zone}: {exc}")
                continue
            return list(out["Instances"])
        raise CapacityError(f"{req.address}: no zone could take it: " + "; ".join(errors), p)

    def _run_params(self, region: aws_ec2.Region, req: LaunchRequest) -> dict[str, Any]:
        p = req.placement
        _, public = ssh.ensure_key(self._home)
        tags = self._tags(req)
        params: dict[str, Any] = {
            "ImageId": self._image(region, req),
            "InstanceType": p.instance_type,
            "MinCount": req.num_nodes,  # all nodes or none: a gang
            "MaxCount": req.num_nodes,
            "KeyName": region.key_pair(public),
            "SecurityGroupIds": [region.security_group(req.ports)],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags[:2]},
            ],
        }
        if p.use_spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        disk = req.task.resources.disk_size
        if disk:
            ebs = {"VolumeSize": disk, "VolumeType": "gp3", "DeleteOnTermination": True}
            params["BlockDeviceMappings"] = [{"DeviceName": "/dev/sda1", "Ebs": ebs}]
        return params

    def _image(self, region: aws_ec2.Region, req: LaunchRequest) -> str:
        wanted = req.task.resources.image_id
        if isinstance(wanted, dict):
            wanted = wanted.get(region.name)
        if isinstance(wanted, str) and wanted.startswith("ami-"):
            return wanted
        return region.image(bool(req.placement.accelerator), self._settings)

    def _tags(self, req: LaunchRequest) -> list[dict[str, str]]:
        meta = files.new_record(req, time.time())
        values = {
            "skyform-id": req.skyform_id,
            "skyform-address": req.address,
            "Name": f"skyform-{meta['cluster_name']}",
            "skyform-kind": req.kind.value,
            "skyform-task-id": str(meta["task_id"]),
            "skyform-num-nodes": str(req.num_nodes),
            "skyform-placement": json.dumps(asdict(req.placement), separators=(",", ":")),
            "skyform-ports": ",".join(str(p) for p in req.ports),
            "skyform-replica": "" if req.replica_id is None else str(req.replica_id),
        }
        return [{"Key": k, "Value": v} for k, v in values.items()]

    def _boot_detail(self, group: Instances) -> str:
        return f" ({group.reasons()})"

    # ---- observe --------------------------------------------------------------------------

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        out = []
        gone = self._gone()
        sel = selector or Selector()
        for name in self._known_regions():
            found = self.region(name).owned(sel.skyform_id, sel.address)
            for group in group_by_id(found, gone).values():
                handle = self._handle(group)
                if selector is None or selector.matches(handle):
                    out.append(self._observed(group, handle))
        return out

    # ---- run, stop, start, terminate ------------------------------------------------------

    def stop(self, handle: Handle) -> None:
        self.check_stoppable(handle)
        region = self.region(handle.placement.region or DEFAULT_REGION)
        region.call("stop_instances", InstanceIds=handle.resource_id.split(","))

    def start(self, handle: Handle) -> Handle:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be started")
        region = self.region(handle.placement.region or DEFAULT_REGION)
        ids = handle.resource_id.split(",")
        group = Instances(region.by_ids(ids))
        if cloud_nodes.GONE in group.states(handle.num_nodes):
            raise ProviderError(f"{handle.address}: its instances are gone; launch it again")
        if cloud_nodes.STOPPED in group.states():
            self._wait_stopped(region, ids)
            region.call("start_instances", InstanceIds=ids)
        deadline = time.monotonic() + self._boot_timeout
        while not all(s == cloud_nodes.UP for s in group.states()):
            if time.monotonic() > deadline:
                raise ProviderError(f"{handle.address}: not running {self._boot_timeout:g}s on")
            time.sleep(self._poll)
            group = Instances(region.by_ids(ids))
        return self._handle(group)

    def _wait_stopped(self, region: aws_ec2.Region, ids: list[str]) -> None:
        """A `stopping` instance cannot be started yet."""
        deadline = time.monotonic() + self._boot_timeout
        while any(i["State"]["Name"] == "stopping" for i in region.by_ids(ids)):
            if time.monotonic() > deadline:
                raise ProviderError(f"instances {', '.join(ids)} still stopping")
            time.sleep(self._poll)

    def terminate(self, handle: Handle) -> None:
        region = self.region(handle.placement.region or DEFAULT_REGION)
        found = region.owned(handle.skyform_id, None)
        ids = sorted({*handle.resource_id.split(","), *(i["InstanceId"] for i in found)})
        self._terminate_ids(region, ids, handle.skyform_id)

    def _terminate_ids(self, region: aws_ec2.Region, ids: list[str], skyform_id: str) -> None:
        gone = self._root / "gone"
        gone.mkdir(parents=True, exist_ok=True)
        (gone / skyform_id).touch()  # first: observe() must never resurrect it
        region.terminate([i for i in ids if i])

    # ---- helpers --------------------------------------------------------------------------

    def _gone(self) -> set[str]:
        gone = self._root / "gone"
        return {p.name for p in gone.iterdir()} if gone.is_dir() else set()

    def _by_handle(self, handle: Handle) -> Instances:
        region = self.region(handle.placement.region or DEFAULT_REGION)
        return Instances(region.by_ids(handle.resource_id.split(",")))

    def _nodes(self, group: Instances) -> cloud_nodes.Nodes:
        user = str(self._settings.get("ssh_user") or "ubuntu")
        return self._ssh_nodes(group.ssh_ips(), user, group.handle_fields()["resource"])

    def _handle(self, group: Instances) -> Handle:
        f = group.handle_fields()
        kind = ResourceKind(f["kind"])
        ports = tuple(f["ports"])
        endpoint = None
        if kind == ResourceKind.SERVICE_REPLICA and ports:
            endpoint = f"{group.ssh_ips()[0]}:{ports[0]}"
        return Handle(
            provider=self.name,
            address=f["address"],
            skyform_id=f["skyform_id"],
            kind=kind,
            placement=Placement(**f["placement"]),
            num_nodes=int(f["num_nodes"]),
            resource_id=",".join(group.ids),
            task_id=f["task_id"],
            endpoint=endpoint,
            ports=ports,
        )


def from_settings(home: Path, settings: Mapping[str, Any]) -> AwsProvider:
    return AwsProvider(home, settings)


def check(settings: Mapping[str, Any]) -> str | None:
    """Usable when boto3 finds credentials; AWS itself is not called (that is for launch)."""
    return aws_ec2.credentials_problem()
