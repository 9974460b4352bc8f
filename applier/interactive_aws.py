"""Getting into AWS clusters: SSH to the instances (`applier.interactive_cloud`), found by the
ids in the handle; activity is the instances' `skyform-last-active` tag (epoch seconds).
boto3 is imported with the provider, on first use, so a missing SDK is a ProviderError.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from applier.interactive_cloud import CloudInteractive
from applier.provider import Handle
from applier.providers import cloud_nodes
from applier.providers.aws_instances import Instances
from schema.errors import ProviderError

if TYPE_CHECKING:
    from applier.providers.aws import AwsProvider

ACTIVITY_TAG = "skyform-last-active"


class AwsNodes:
    def __init__(self, provider: AwsProvider, default_region: str) -> None:
        self._provider = provider
        self._default_region = default_region

    def _running(self, handle: Handle) -> tuple[Any, Instances]:
        region = self._provider.region(handle.placement.region or self._default_region)
        group = Instances(region.by_ids(handle.resource_id.split(",")))
        states = group.states(handle.num_nodes)
        if any(s != cloud_nodes.UP for s in states):
            raise ProviderError(
                f"{handle.address} is not running ({', '.join(states)}); "
                "start it (skyform apply) to connect"
            )
        return region, group

    def addresses(self, handle: Handle) -> list[str]:
        _, group = self._running(handle)
        return group.ssh_ips()

    def record_activity(self, handle: Handle) -> None:
        region, group = self._running(handle)
        tag = [{"Key": ACTIVITY_TAG, "Value": str(int(time.time()))}]
        region.call("create_tags", Resources=group.ids, Tags=tag)


def make(home: Path, settings: Mapping[str, Any]) -> CloudInteractive:
    try:
        aws = importlib.import_module("applier.providers.aws")
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"aws: the SDK is missing ({exc.name}); install it with `pip install 'skyform[aws]'`"
        ) from None
    provider: AwsProvider = aws.AwsProvider(home, settings)
    return CloudInteractive(home, settings, AwsNodes(provider, aws.DEFAULT_REGION))
