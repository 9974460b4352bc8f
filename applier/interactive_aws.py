"""Getting into AWS clusters: SSH to the instances (`applier.interactive_cloud`), found by the
ids in the handle; activity is the instances' `skyform-last-active` tag (epoch seconds), which
the provider reports as `last_active` for autostop. boto3 is imported with the provider, on
first use, so a missing SDK is a ProviderError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from applier.interactive_cloud import CloudInteractive
from applier.providers import cloud_nodes, ssh_provider

if TYPE_CHECKING:
    from applier.providers.aws import AwsProvider

ACTIVITY_TAG = cloud_nodes.ACTIVITY_KEY


def make(home: Path, settings: Mapping[str, Any]) -> CloudInteractive:
    provider: AwsProvider = ssh_provider.load("aws").AwsProvider(home, settings)
    return CloudInteractive(home, settings, provider)
