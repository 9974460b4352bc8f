"""The `gcp` provider: GCE instances (standard or spot) labelled with the resource's Skyform id
and sanitized address, found again by one aggregated list; setup and run over SSH
(`cloud_nodes`, `ssh_provider`). google-cloud-compute is imported in `gcp_compute` only.

- A placement's zone (the plan always names one for GCP) is where every node is inserted; a
  placement without one tries `<region>-a`, `-b`, `-c`, `-f` in order. Stockouts and quota
  errors become CapacityError (the applier fails over and blocks the place), rate limits
  TransientError.
- Preemption: a spot instance that GCE stopped (TERMINATED) or deleted makes the run PREEMPTED;
  a standard instance lost outside Skyform NODE_LOST.
- Deleted resources are remembered under `<home>/gcp/gone/`, since GCE lists an instance for a
  while as it is deleted.
- Ports: a resource with ports (a service replica's assigned port, the task's `resources.ports`)
  gets the VPC firewall rule `skyform-<id8>-ports` for its instances' network tag
  (`gcp_spec.firewall_body`), made before its first instance is inserted and deleted with its
  instances (a launch that fails leaves none). A relaunch that adopts the instances adopts the
  rule too: patched to the request's ports, made again when missing, deleted when the request
  has none, and the tag added to instances that lack it. SSH (22) is left to the network's
  own rules, as before (`default-allow-ssh` on the `default` network).
- Activity and autostop are instance labels (`cloud_nodes.ACTIVITY_KEY`, `AUTOSTOP_KEY`), read
  from the same list that finds the instances; a relaunch that adopts the instances with
  another autostop rewrites or removes it (setLabels on each instance that differs).
- Settings: `regions`, `project_id`, `image_id`, `ssh_user` (gcpuser), `remote_root`,
  `ssh_host_override` and `api_endpoint` (tests only), `boot_timeout_s`, `ssh_timeout_s`,
  `poll_s`, `operation_timeout_s`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from applier.provider import FreeCapacity, Handle, LaunchRequest, ObservedResource, Selector
from applier.providers import gcp_compute, gcp_spec, ssh
from applier.providers import local_files as files
from applier.providers.gcp_instances import Instances, group_by_id, label, zone_of
from applier.providers.ssh_provider import SshNodesProvider
from schema.errors import CapacityError, ProviderError, SkyformError


class GcpProvider(SshNodesProvider[Instances]):
    """See the module docstring. Built by `from_settings`."""

    name = "gcp"
    _cloud_label = "GCP"
    _default_user = "gcpuser"
    _a_placement = "a gcp placement"

    def __init__(self, home: Path, settings: Mapping[str, Any]) -> None:
        super().__init__(home, settings)
        self._compute: gcp_compute.Compute | None = None

    @property
    def compute(self) -> gcp_compute.Compute:
        with self._lock:  # built on first use: credentials are read once, lazily
            if self._compute is None:
                self._compute = gcp_compute.Compute(self._settings)
            return self._compute

    def capacity(self) -> list[FreeCapacity]:
        return []  # clouds are sized by the catalog; stockouts show up at launch

    # ---- launch ---------------------------------------------------------------------------

    def _validate_place(self, req: LaunchRequest) -> None:
        if not req.placement.zone and not req.placement.region:
            raise ProviderError(f"{req.address}: a gcp placement needs a region or zone")

    def _adoptable(self, req: LaunchRequest) -> Instances | None:
        """The instances an earlier launch left, with their firewall rule brought up to date."""
        found = self.compute.owned({"skyform-id": label(req.skyform_id)})
        group = group_by_id(found, self._gone()).get(label(req.skyform_id))
        if group is None or not group.alive_or_pending():
            return None
        self._adopt_ports(req, group)
        return group

    def _create(self, req: LaunchRequest) -> Instances:
        """The ports opened first (so they are open once an instance is reachable), then the
        instances; a launch that fails leaves no rule either."""
        opened = bool(gcp_spec.firewall_ports(req))
        if opened:
            self._open_ports(req)
        try:
            return self._create_in_zones(req)
        except BaseException:
            if opened:  # nothing of this id runs: the rule would serve none
                with contextlib.suppress(SkyformError):  # the launch's own error matters
                    self.compute.delete_firewall(gcp_spec.firewall_name(req.skyform_id))
            raise

    def _create_in_zones(self, req: LaunchRequest) -> Instances:
        """Every node in the placement's zone, or in each default zone of the region in turn."""
        p = req.placement
        zones = [p.zone] if p.zone else [f"{p.region}-{z}" for z in "abcf"]
        errors = []
        for zone in zones:
            try:
                return Instances(self._create_in(req, zone))
            except CapacityError as exc:
                if p.zone or "quota" in str(exc):
                    raise  # the plan's own zone, or a regional quota other zones share
                errors.append(f"{zone}: {exc}")
        raise CapacityError(f"{req.address}: no zone could take it: " + "; ".join(errors), p)

    def _create_in(self, req: LaunchRequest, zone: str) -> list[dict[str, Any]]:
        """All nodes or none: a gang, so a partial launch is deleted before failing over."""
        _, public = ssh.ensure_key(self._home)
        user = self._user()
        handle = self._handle_fields(req)
        made: list[dict[str, Any]] = []
        try:
            for rank in range(req.num_nodes):
                body = gcp_spec.instance_body(req, zone, rank, self._settings, user, public, handle)
                self.compute.insert(zone, body, req.placement)
                made.append({"name": body["name"], "zone": zone})
        except BaseException:
            self._delete(made, None)
            raise
        return [i for m in made if (i := self.compute.get(zone, m["name"])) is not None]

    def _handle_fields(self, req: LaunchRequest) -> str:
        meta = files.new_record(req, time.time())
        fields = {
            "address": req.address,
            "skyform_id": req.skyform_id,
            "kind": req.kind.value,
            "task_id": str(meta["task_id"]),
            "num_nodes": req.num_nodes,
            "placement": asdict(req.placement),
            "ports": list(req.ports),
        }
        return json.dumps(fields, separators=(",", ":"))

    def _refetch(self, req: LaunchRequest, group: Instances) -> Instances:
        found = (self.compute.get(zone_of(i), str(i["name"])) for i in group.items)
        return Instances(i for i in found if i is not None)

    def _discard(self, req: LaunchRequest, group: Instances) -> None:
        self._delete(group.items, req.skyform_id)

    # ---- ports ----------------------------------------------------------------------------

    def _open_ports(self, req: LaunchRequest) -> None:
        body = gcp_spec.firewall_body(req, self._settings, self.compute.project)
        self.compute.ensure_firewall(body)

    def _adopt_ports(self, req: LaunchRequest, group: Instances) -> None:
        """Adopted instances get the request's rule (and their tag, when an older Skyform
        launched them without it), or lose a rule the request no longer wants."""
        if not gcp_spec.firewall_ports(req):
            self.compute.delete_firewall(gcp_spec.firewall_name(req.skyform_id))
            return
        self._open_ports(req)
        tag = gcp_spec.network_tag(req.skyform_id)
        for instance in group.items:
            self.compute.set_tags(zone_of(instance), instance, [tag])

    def _remember(self, handle: Handle) -> None:
        launched = self._root / "launched"
        launched.mkdir(parents=True, exist_ok=True)
        tmp = launched / f".{label(handle.skyform_id)}.{threading.get_ident()}"
        tmp.write_text(json.dumps(handle.as_dict()))
        tmp.replace(launched / f"{label(handle.skyform_id)}.json")

    def _launched(self) -> dict[str, Handle]:
        launched = self._root / "launched"
        paths = sorted(launched.glob("*.json")) if launched.is_dir() else []
        return {p.stem: Handle.from_dict(json.loads(p.read_text())) for p in paths}

    # ---- observe --------------------------------------------------------------------------

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        sel = selector or Selector()
        labels = {"skyform-id": label(sel.skyform_id)} if sel.skyform_id else {}
        if sel.address:
            labels["skyform-address"] = label(sel.address)
        gone = self._gone()
        groups = group_by_id(self.compute.owned(labels), gone)
        out = []
        for group in groups.values():
            handle = self._handle(group)
            if selector is None or selector.matches(handle):
                out.append(self._observed(group, handle))
        # GCE forgets deleted instances at once: a resource launched from here whose instances
        # all vanished (a spot deletion, a console delete) is still reported, as lost.
        for sid, handle in self._launched().items():
            if sid not in groups and sid not in gone and sel.matches(handle):
                out.append(self._observed(Instances([]), handle))
        return out

    # ---- stop, start, terminate -----------------------------------------------------------

    def stop(self, handle: Handle) -> None:
        self.check_stoppable(handle)
        for zone, name in self._names(handle):
            self.compute.act("stop", zone, name, wait=True)

    def _start_stopped(self, handle: Handle, group: Instances) -> Instances:
        for instance in group.items:
            if instance.get("status") in ("TERMINATED", "STOPPING", "SUSPENDED"):
                self.compute.act("start", _zone(instance, handle), instance["name"], wait=True)
        return self._by_handle(handle)

    def terminate(self, handle: Handle) -> None:
        found = self.compute.owned({"skyform-id": label(handle.skyform_id)})
        known = [{"name": n, "zone": z} for z, n in self._names(handle)]
        self._delete([*known, *found], handle.skyform_id)

    def _delete(self, instances: list[dict[str, Any]], skyform_id: str | None) -> None:
        """Delete the instances; with the resource's id (all of it goes), its rule as well."""
        if skyform_id is not None:
            self._mark_gone(label(skyform_id))
            (self._root / "launched" / f"{label(skyform_id)}.json").unlink(missing_ok=True)
        done = set()
        for instance in instances:
            key = (zone_of(instance), str(instance["name"]))
            if key not in done:
                done.add(key)
                self.compute.act("delete", *key, wait=False)
        if skyform_id is not None:  # a rule already gone (or never made) is fine
            self.compute.delete_firewall(gcp_spec.firewall_name(skyform_id))

    # ---- the instances --------------------------------------------------------------------

    def _names(self, handle: Handle) -> list[tuple[str, str]]:
        """(zone, name) per node; the handle's resource id is `zone/name,...`."""
        out = []
        for part in handle.resource_id.split(","):
            zone, _, name = part.rpartition("/")
            out.append((zone or handle.placement.zone or "", name))
        return out

    def _by_handle(self, handle: Handle) -> Instances:
        found = (self.compute.get(zone, name) for zone, name in self._names(handle))
        return Instances(i for i in found if i is not None)

    def _resource_id(self, group: Instances) -> str:
        return ",".join(f"{_zone(i, None)}/{i['name']}" for i in group.items)

    def _marks(self, group: Instances) -> list[dict[str, str]]:
        return [dict(i.get("labels") or {}) for i in group.items]

    def _set_marks(self, handle: Handle, group: Instances, marks: Mapping[str, str | None]) -> None:
        for instance in group.items:
            self.compute.set_labels(_zone(instance, handle), instance, marks)


def _zone(instance: dict[str, Any], handle: Handle | None) -> str:
    zone = zone_of(instance)
    return zone or (handle.placement.zone if handle and handle.placement.zone else "")


def from_settings(home: Path, settings: Mapping[str, Any]) -> GcpProvider:
    return GcpProvider(home, settings)


def check(settings: Mapping[str, Any]) -> str | None:
    """Usable with application default credentials and a project; GCE itself is not called."""
    return gcp_compute.credentials_problem(settings)
