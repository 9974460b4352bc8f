"""Reaching Kubernetes: kubeconfig contexts (honouring KUBECONFIG) or in-cluster config, one API
client per context, and the translation of client errors into Skyform's error types.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes import config as _config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from schema.errors import ProviderError, SkyformError, TransientError

IN_CLUSTER = "in-cluster"  # SkyPilot's name for the context of a pod's service account
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read: a dead API server is a TransientError, not a hang
T = TypeVar("T")
config: Any = _config  # the loaders have no annotations


@dataclass(frozen=True)
class ContextSettings:
    """One `infra: k8s/<context>` entry of skyform.yaml."""

    context: str | None  # None: the kubeconfig's current context
    namespace: str | None = None
    pricing: Mapping[str, Any] | None = None
    # None: the provider's own (from_settings' provider-wide settings, else the defaults)
    queue: str | None = None
    image: str | None = None
    schedule_timeout_s: float | None = None


def contexts_from_settings(settings: Mapping[str, Any]) -> list[ContextSettings]:
    entries = settings.get("contexts") or [{"context": None}]
    out = []
    for e in entries:
        timeout = e.get("schedule_timeout_s")
        out.append(
            ContextSettings(
                e.get("context"), e.get("namespace"), e.get("pricing"),
                queue=e.get("queue") or None, image=e.get("image") or None,
                schedule_timeout_s=float(timeout) if timeout is not None else None,
            )
        )  # fmt: skip
    return out


def kubeconfig_path() -> str | None:
    """KUBECONFIG (read now, not at import: it may be ':'-separated), else ~/.kube/config if
    it exists."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.exists() else None


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@dataclass
class Kubeconfig:
    """The contexts Skyform can use: from the kubeconfig file(s), or the in-cluster one."""

    path: str | None
    names: list[str] = field(default_factory=list)
    current: str | None = None
    namespaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Kubeconfig:
        path = kubeconfig_path()
        if path is None:
            if in_cluster():
                ns = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else "default"
                return cls(None, [IN_CLUSTER], IN_CLUSTER, {IN_CLUSTER: ns})
            raise ProviderError(
                "kubernetes: no kubeconfig (~/.kube/config is missing and KUBECONFIG is unset) "
                "and not running inside a cluster; point KUBECONFIG at your cluster's kubeconfig"
            )
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except (ConfigException, OSError) as exc:
            raise ProviderError(f"kubernetes: cannot read kubeconfig {path}: {exc}") from None
        names = [c["name"] for c in contexts]
        namespaces = {
            c["name"]: (c.get("context") or {}).get("namespace") or "default" for c in contexts
        }
        return cls(path, names, (active or {}).get("name"), namespaces)

    def resolve(self, context: str | None) -> str:
        """The context's name (None: the current one), or a ProviderError saying what to fix."""
        name = context or self.current
        if name is None:
            raise ProviderError(
                f"kubernetes: kubeconfig {self.path} has no current context; name one in "
                f"skyform.yaml as `infra: k8s/<context>` (contexts: {', '.join(self.names)})"
            )
        if name not in self.names:
            raise ProviderError(
                f"kubernetes: context {name!r} is not in kubeconfig {self.path or '(in-cluster)'} "
                f"(it has: {', '.join(self.names) or 'none'}); fix `infra: k8s/{name}` in "
                "skyform.yaml or set KUBECONFIG"
            )
        return name

    def api_client(self, context: str) -> Any:
        if context == IN_CLUSTER and self.path is None:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        try:
            return config.new_client_from_config(config_file=self.path, context=context)
        except (ConfigException, OSError) as exc:
            raise ProviderError(f"kubernetes: context {context!r}: {exc}") from None


class Api:
    """The calls Skyform makes to one context, each with a timeout and our error types."""

    def __init__(self, context: str, api_client: Any) -> None:
        self.context = context
        self.core = client.CoreV1Api(api_client)
        self.api_client = api_client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise translate(exc, f"kubernetes/{self.context}: {what}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(
                f"kubernetes/{self.context}: {what}: cannot reach the API server ({exc})", 10.0
            ) from exc

    def call_ok_missing(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """A delete: what is already gone is fine."""
        try:
            self.call(what, fn, *args, **kw)
        except ProviderError as exc:
            if getattr(exc.__cause__, "status", None) != 404:
                raise


def status_code(exc: BaseException) -> int | None:
    cause = exc.__cause__ if isinstance(exc, SkyformError) else exc
    return getattr(cause, "status", None)


def translate(exc: ApiException, what: str) -> SkyformError:
    """An API error as what the caller should do: retry later, or stop and report."""
    reason = _message(exc)
    if exc.status in (0, 429, 500, 502, 503, 504):
        retry = (exc.headers or {}).get("Retry-After") if exc.headers else None
        seconds = float(retry) if retry and str(retry).isdigit() else 5.0
        return TransientError(f"{what}: {exc.status} {reason}; will retry", seconds)
    if exc.status in (401, 403):
        return ProviderError(
            f"{what}: permission denied ({reason}); give this context's user rights to "
            "pods, services, nodes and events, or use another context"
        )
    return ProviderError(f"{what}: {exc.status} {reason}")


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return str(exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else ""
