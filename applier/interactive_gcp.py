"""Getting into GCP clusters: SSH to the instances (`applier.interactive_cloud`), found by the
`zone/name` pairs in the handle; activity is the instances' `skyform-last-active` label (epoch
seconds, set with the label fingerprint GCE requires), which the provider reports as
`last_active` for autostop. The default user is the provider's (`gcpuser`).
google-cloud-compute is imported with the provider, on first use, so a missing SDK is a
ProviderError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from applier.interactive_cloud import USER_ENV, CloudInteractive, setting
from applier.providers import cloud_nodes, ssh_provider

if TYPE_CHECKING:
    from applier.providers.gcp import GcpProvider

ACTIVITY_LABEL = cloud_nodes.ACTIVITY_KEY
DEFAULT_USER = "gcpuser"  # as `GcpProvider` launches with


def make(home: Path, settings: Mapping[str, Any]) -> CloudInteractive:
    provider: GcpProvider = ssh_provider.load("gcp").GcpProvider(home, settings)
    user = setting(settings, "ssh_user", USER_ENV, DEFAULT_USER)
    return CloudInteractive(home, {**settings, "ssh_user": user}, provider)
