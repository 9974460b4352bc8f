"""The `aws` provider: EC2 instances (on-demand or spot) tagged with the resource's address and
Skyform id, found again by one DescribeInstances per region; setup and run over SSH
(`cloud_nodes`, `ssh_provider`). boto3 is imported here and in `aws_ec2` only.

- A placement with a zone (a catalog zone id such as `use1-az4`) launches there; one without
  tries the region's zones in order. Capacity errors become CapacityError (the applier fails
  over and blocks the place), quota errors CapacityError with the fix, throttling TransientError.
- Preemption: a spot instance terminated by AWS (state reason Server.SpotInstanceTermination) or
  gone altogether makes the run PREEMPTED; an on-demand instance lost outside Skyform NODE_LOST.
- Instances Skyform terminates are remembered under `<home>/aws/gone/` and tagged, since EC2
  keeps listing terminated instances for a while.
- Activity and autostop are instance tags (`cloud_nodes.ACTIVITY_KEY`, `AUTOSTOP_KEY`), read
  from the same DescribeInstances that finds the instances; a relaunch that adopts the
  instances with another autostop rewrites (CreateTags) or removes (DeleteTags) it.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from applier.provider import FreeCapacity, Handle, LaunchRequest, ObservedResource, Selector
from applier.providers import aws_ec2, cloud_nodes, ssh
from applier.providers import local_files as files
from applier.providers.aws_instances import Instances, group_by_id, tags
from applier.providers.ssh_provider import SshNodesProvider
from schema.errors import CapacityError, ProviderError

DEFAULT_REGION = "us-east-1"


class AwsProvider(SshNodesProvider[Instances]):
    """See the module docstring. Built by `from_settings`; `client` makes one region's client."""

    name = "aws"
    _cloud_label = "AWS"
    _default_user = "ubuntu"
    _a_placement = "an aws placement"

    def __init__(
        self,
        home: Path,
        settings: Mapping[str, Any],
        client: Callable[[str], Any] = aws_ec2.make_client,
    ) -> None:
        super().__init__(home, settings)
        self._client = client
        self._regions: dict[str, aws_ec2.Region] = {}

    # ---- regions --------------------------------------------------------------------------

    def region(self, name: str) -> aws_ec2.Region:
        with self._lock:
            if name not in self._regions:
                self._regions[name] = aws_ec2.Region(name, self._client(name))
            return self._regions[name]

    def _region_of(self, where: Handle | LaunchRequest) -> aws_ec2.Region:
        return self.region(where.placement.region or DEFAULT_REGION)

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

    def _adoptable(self, req: LaunchRequest) -> Instances | None:
        found = self._region_of(req).owned(req.skyform_id, None)
        group = group_by_id(found, self._gone()).get(req.skyform_id)
        return group if group is not None and group.alive_or_pending() else None

    def _create(self, req: LaunchRequest) -> Instances:
        """RunInstances in the placement's zone, or in each zone of the region in turn."""
        region = self._region_of(req)
        self._remember_region(region.name)
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
            return Instances(out["Instances"])
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
            "SecurityGroupIds": [region.security_group(cloud_nodes.port_ranges(req))],
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
        autostop = cloud_nodes.autostop_mark(req)
        if autostop is not None:
            values[cloud_nodes.AUTOSTOP_KEY] = autostop
        return [{"Key": k, "Value": v} for k, v in values.items()]

    def _refetch(self, req: LaunchRequest, group: Instances) -> Instances:
        return Instances(self._region_of(req).by_ids(group.ids))

    def _discard(self, req: LaunchRequest, group: Instances) -> None:
        self._terminate_ids(self._region_of(req), group.ids, req.skyform_id)

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

    # ---- stop, start, terminate -----------------------------------------------------------

    def stop(self, handle: Handle) -> None:
        self.check_stoppable(handle)
        self._region_of(handle).call("stop_instances", InstanceIds=handle.resource_id.split(","))

    def _start_stopped(self, handle: Handle, group: Instances) -> Instances:
        if cloud_nodes.STOPPED in group.states():
            region, ids = self._region_of(handle), handle.resource_id.split(",")
            self._wait_stopped(region, ids)
            region.call("start_instances", InstanceIds=ids)
        return group

    def _wait_stopped(self, region: aws_ec2.Region, ids: list[str]) -> None:
        """A `stopping` instance cannot be started yet."""
        deadline = time.monotonic() + self._boot_timeout
        while any(i["State"]["Name"] == "stopping" for i in region.by_ids(ids)):
            if time.monotonic() > deadline:
                raise ProviderError(f"instances {', '.join(ids)} still stopping")
            time.sleep(self._poll)

    def terminate(self, handle: Handle) -> None:
        region = self._region_of(handle)
        found = region.owned(handle.skyform_id, None)
        ids = sorted({*handle.resource_id.split(","), *(i["InstanceId"] for i in found)})
        self._terminate_ids(region, ids, handle.skyform_id)

    def _terminate_ids(self, region: aws_ec2.Region, ids: list[str], skyform_id: str) -> None:
        self._mark_gone(skyform_id)
        region.terminate([i for i in ids if i])

    # ---- the instances --------------------------------------------------------------------

    def _by_handle(self, handle: Handle) -> Instances:
        return Instances(self._region_of(handle).by_ids(handle.resource_id.split(",")))

    def _resource_id(self, group: Instances) -> str:
        return ",".join(group.ids)

    def _marks(self, group: Instances) -> list[dict[str, str]]:
        return [tags(i) for i in group.items]

    def _set_marks(self, handle: Handle, group: Instances, marks: Mapping[str, str | None]) -> None:
        """One CreateTags (and one DeleteTags, for the keys to remove) for all the instances."""
        region = self._region_of(handle)
        put = [{"Key": k, "Value": v} for k, v in marks.items() if v is not None]
        drop = [{"Key": k} for k, v in marks.items() if v is None]
        if put:
            region.call("create_tags", Resources=group.ids, Tags=put)
        if drop:
            region.call("delete_tags", Resources=group.ids, Tags=drop)


def from_settings(home: Path, settings: Mapping[str, Any]) -> AwsProvider:
    return AwsProvider(home, settings)


def check(settings: Mapping[str, Any]) -> str | None:
    """Usable when boto3 finds credentials; AWS itself is not called (that is for launch)."""
    return aws_ec2.credentials_problem()
