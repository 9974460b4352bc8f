"""Which provider serves which cloud, built lazily so an SDK is imported only when its infra is
used, and a missing SDK or credential is a reason (`skyform check`), never a traceback.

Each provider module offers `from_settings(home: Path, settings: Mapping) -> Provider` and
`check(settings: Mapping) -> str | None` (None when usable, else why not and how to fix it).
`settings` is the provider's own part of the settings built from skyform.yaml (see
`settings_from_infra`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from applier.provider import Provider

MODULES = {
    "local": "applier.providers.local",
    "kubernetes": "applier.providers.kubernetes",
    "aws": "applier.providers.aws",
    "gcp": "applier.providers.gcp",
}


class ProviderUnavailable(Exception):
    """This infra cannot be used from here; the message says why and how to fix it."""


def _module(cloud: str) -> Any:
    name = MODULES.get(cloud)
    if name is None:
        raise ProviderUnavailable(f"Skyform has no provider for {cloud!r} yet")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise ProviderUnavailable(f"Skyform's {cloud} provider is not available yet") from None
        raise ProviderUnavailable(
            f"{cloud}: the SDK is missing ({exc.name}); install it with "
            f"`pip install 'skyform[{cloud}]'`"
        ) from None


def check(cloud: str, settings: Mapping[str, Any]) -> str | None:
    """None when `cloud` is usable from here, else the reason."""
    try:
        module = _module(cloud)
    except ProviderUnavailable as exc:
        return str(exc)
    reason: str | None = module.check(settings.get(cloud, {}))
    return reason


def make_provider(cloud: str, home: Path, settings: Mapping[str, Any]) -> Provider:
    module = _module(cloud)
    reason = module.check(settings.get(cloud, {}))
    if reason:
        raise ProviderUnavailable(reason)
    provider: Provider = module.from_settings(home, settings.get(cloud, {}))
    return provider


def available(
    clouds: list[str], home: Path, settings: Mapping[str, Any]
) -> tuple[dict[str, Provider], dict[str, str]]:
    """The usable providers among `clouds`, and why the others are not."""
    usable: dict[str, Provider] = {}
    reasons: dict[str, str] = {}
    for cloud in dict.fromkeys(clouds):
        try:
            usable[cloud] = make_provider(cloud, home, settings)
        except ProviderUnavailable as exc:
            reasons[cloud] = str(exc)
    return usable, reasons
