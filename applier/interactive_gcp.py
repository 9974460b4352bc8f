"""Getting into GCP clusters: SSH to the instances (`applier.interactive_cloud`), found by the
`zone/name` pairs in the handle; activity is the instances' `skyform-last-active` label (epoch
seconds, set with the label fingerprint GCE requires). The default user is the provider's
(`gcpuser`). google-cloud-compute is imported with the provider, on first use, so a missing SDK
is a ProviderError.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from applier.interactive_cloud import USER_ENV, CloudInteractive, setting
from applier.provider import Handle
from applier.providers import cloud_nodes
from applier.providers.gcp_instances import Instances
from schema.errors import ProviderError

if TYPE_CHECKING:
    from applier.providers.gcp import GcpProvider

ACTIVITY_LABEL = "skyform-last-active"
DEFAULT_USER = "gcpuser"  # as `GcpProvider` launches with


def names(handle: Handle) -> list[tuple[str, str]]:
    """(zone, name) per node: the handle's resource id is `zone/name,...`."""
    out = []
    for part in handle.resource_id.split(","):
        zone, _, name = part.rpartition("/")
        out.append((zone or handle.placement.zone or "", name))
    return out


class GcpNodes:
    def __init__(self, provider: GcpProvider) -> None:
        self._provider = provider

    def _running(self, handle: Handle) -> Instances:
        compute = self._provider.compute
        found = (compute.get(zone, name) for zone, name in names(handle))
        group = Instances(i for i in found if i is not None)
        states = group.states(handle.num_nodes)
        if any(s != cloud_nodes.UP for s in states):
            raise ProviderError(
                f"{handle.address} is not running ({', '.join(states)}); "
                "start it (skyform apply) to connect"
            )
        return group

    def addresses(self, handle: Handle) -> list[str]:
        return self._running(handle).ssh_ips()

    def record_activity(self, handle: Handle) -> None:
        compute_v1: Any = importlib.import_module("google.cloud.compute_v1")
        compute = self._provider.compute
        now = str(int(time.time()))
        for instance in self._running(handle).items:
            zone = str(instance["zone"]).rsplit("/", 1)[-1]
            labels = {**(instance.get("labels") or {}), ACTIVITY_LABEL: now}
            body = compute_v1.InstancesSetLabelsRequest(
                labels=labels, label_fingerprint=instance.get("labelFingerprint", "")
            )
            op = compute.call(
                compute.instances.set_labels_unary,
                zone,
                project=compute.project,
                zone=zone,
                instance=instance["name"],
                instances_set_labels_request_resource=body,
            )
            compute.wait(zone, op.name)


def make(home: Path, settings: Mapping[str, Any]) -> CloudInteractive:
    try:
        gcp = importlib.import_module("applier.providers.gcp")
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"gcp: the SDK is missing ({exc.name}); install it with `pip install 'skyform[gcp]'`"
        ) from None
    provider: GcpProvider = gcp.GcpProvider(home, settings)
    user = setting(settings, "ssh_user", USER_ENV, DEFAULT_USER)
    return CloudInteractive(home, {**settings, "ssh_user": user}, GcpNodes(provider))
