"""google-cloud-compute for the GCP provider: credentials and project, clients (optionally at an
emulator's endpoint), GCE errors translated into Skyform's, and the instance and firewall calls
it makes.

Unary calls plus an explicit wait on a `ZoneOperationsClient` (instances) or
`GlobalOperationsClient` (firewall rules) built with the same endpoint: the library's
ExtendedOperation polls through a client of its own that ignores `client_options`.
The library's retries are off (`retry=None`): `call` retries rate limits itself with backoff
and raises TransientError once its budget is spent; stockouts and quota errors surface at once.
A firewall rule is project-wide, so its quota errors are ProviderErrors, not capacity: no other
zone or region would take it.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import google.auth
import google.auth.exceptions
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from applier.provider import Placement
from schema.errors import CapacityError, ProviderError, TransientError

ENDPOINT_ENV = "SKYFORM_GCP_ENDPOINT"
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
CAPACITY = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "insufficientCapacity",
        "resourcePoolExhausted",
        "UNSUPPORTED_OPERATION",
    }
)
STOCKOUT_WORDS = ("does not have enough resources", "stockout", "resource pool exhausted")
QUOTA = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
RATE = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RESOURCE_OPERATION_RATE_EXCEEDED"})
QUOTA_HINT = (
    "raise the quota in the Cloud console (IAM & Admin > Quotas, e.g. CPUS or "
    "NVIDIA_*_GPUS for {region}, or GPUS_ALL_REGIONS), or let Skyform fail over elsewhere"
)
FIREWALL_QUOTA_HINT = (
    "a firewall rule is project-wide, so no other zone or region helps: raise the FIREWALLS "
    "quota in the Cloud console (IAM & Admin > Quotas), or delete rules nothing uses "
    "(`gcloud compute firewall-rules list`)"
)
AUTH_FIX = "run `gcloud auth application-default login`"
GLOBAL = "global"  # where a project-wide call is, in errors: GCE's word for it
CALL_ATTEMPTS = 6
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
TIMEOUT_S = 60.0


def endpoint(settings: Mapping[str, Any]) -> str | None:
    """An emulator's endpoint (`http://127.0.0.1:PORT`), for tests only."""
    return str(settings.get("api_endpoint") or os.environ.get(ENDPOINT_ENV) or "") or None


def _credentials(settings: Mapping[str, Any]) -> tuple[Any, str | None]:
    if endpoint(settings):
        # Never send real credentials to an override endpoint: emulators need none.
        return AnonymousCredentials(), None  # type: ignore[no-untyped-call]
    creds, project = google.auth.default(scopes=SCOPES)
    return creds, project


def _project(settings: Mapping[str, Any], adc_project: str | None) -> str | None:
    from_env = next((os.environ[e] for e in PROJECT_ENVS if os.environ.get(e)), None)
    return str(settings.get("project_id") or from_env or adc_project or "") or None


def credentials_problem(settings: Mapping[str, Any]) -> str | None:
    """Why GCP cannot be used from here (None when it can); never calls GCE itself."""
    try:
        _, adc_project = _credentials(settings)
    except google.auth.exceptions.DefaultCredentialsError:
        return f"no GCP application default credentials found; {AUTH_FIX}"
    except google.auth.exceptions.GoogleAuthError as exc:
        return f"GCP credentials could not be loaded: {exc}; {AUTH_FIX}"
    if _project(settings, adc_project) is None:
        return (
            "no GCP project set; set `project_id` for gcp in skyform.yaml, or "
            "GOOGLE_CLOUD_PROJECT, or run `gcloud config set project <id>`"
        )
    return None


def _error_codes(exc: BaseException) -> list[str]:
    if isinstance(exc, gexc.GoogleAPICallError):
        return [str(e.get("reason") or e.get("code") or "") for e in exc.errors or () if e]
    return []


def classify(codes: list[str], message: str) -> str:
    """`quota`, `capacity`, `rate` or `other`, as SkyPilot's GCP failover handler reads it."""
    if any(c in QUOTA for c in codes) or "Quota '" in message:
        return "quota"
    lowered = message.lower()
    if any(c in CAPACITY for c in codes) or any(w in lowered for w in STOCKOUT_WORDS):
        return "capacity"
    if any(c in RATE for c in codes) or "rate limit" in lowered:
        return "rate"
    return "other"


def translate(
    codes: list[str],
    message: str,
    zone: str,
    placement: Placement | None,
    project_wide: str | None = None,
) -> Exception:
    """The Skyform error for a GCE error in `zone`; `project_wide` names a project-wide resource
    (a firewall rule) whose quota or capacity errors are ProviderErrors."""
    region = zone.rsplit("-", 1)[0]
    code = ",".join(c for c in codes if c) or "error"
    kind = classify(codes, message)
    if project_wide is not None and kind in ("quota", "capacity"):
        return ProviderError(
            f"GCP refused {project_wide} ({kind}, {code}): {message}; {FIREWALL_QUOTA_HINT}"
        )
    if kind == "quota":
        hint = QUOTA_HINT.format(region=region)
        return CapacityError(
            f"GCP quota reached in {region} ({code}): {message}; {hint}", placement
        )
    if kind == "capacity":
        where = placement.describe() if placement else zone
        return CapacityError(f"GCP has no capacity for {where} ({code}): {message}", placement)
    if kind == "rate":
        return TransientError(f"GCP is rate limiting requests in {zone} ({code})", 2.0)
    return ProviderError(f"GCP {zone}: {message}")


def _translate_exc(
    exc: Exception, zone: str, placement: Placement | None, project_wide: str | None
) -> Exception:
    if isinstance(exc, gexc.TooManyRequests | gexc.ServiceUnavailable):
        return TransientError(f"GCP is busy in {zone}: {exc}", 2.0)
    if isinstance(exc, gexc.Unauthenticated | google.auth.exceptions.GoogleAuthError):
        return ProviderError(f"GCP refused the credentials: {exc}; {AUTH_FIX}")
    if isinstance(exc, gexc.GoogleAPICallError):
        message = str(getattr(exc, "message", None) or exc)
        return translate(_error_codes(exc), message, zone, placement, project_wide)
    return TransientError(f"cannot reach GCP in {zone}: {exc}", 5.0)


def to_dict(message: Any) -> dict[str, Any]:
    """A response message as the REST JSON (camelCase) dict."""
    out: dict[str, Any] = json.loads(type(message).to_json(message))
    return out


class Compute:
    """One project's clients and the calls the provider makes."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        creds, adc_project = _credentials(settings)
        project = _project(settings, adc_project)
        if project is None:
            raise ProviderError(credentials_problem(settings) or "no GCP project set")
        self.project = project
        url = endpoint(settings)
        opts = ClientOptions(api_endpoint=url) if url else None
        self.instances = compute_v1.InstancesClient(credentials=creds, client_options=opts)
        self.firewalls = compute_v1.FirewallsClient(credentials=creds, client_options=opts)
        # The same endpoint as the other clients: see the module docstring.
        self.ops = compute_v1.ZoneOperationsClient(credentials=creds, client_options=opts)
        self.global_ops = compute_v1.GlobalOperationsClient(credentials=creds, client_options=opts)
        self.op_timeout = float(settings.get("operation_timeout_s", 600.0))

    def call(
        self,
        fn: Callable[..., Any],
        where: str,
        placement: Placement | None = None,
        missing_ok: bool = False,
        conflict_ok: bool = False,
        project_wide: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One call, retrying rate limits with full-jitter backoff; a 404 (or a 409) is None
        when allowed. `project_wide`: see `translate`."""
        for attempt in range(CALL_ATTEMPTS):
            try:
                return fn(retry=None, timeout=TIMEOUT_S, **kwargs)
            except gexc.NotFound as exc:
                if missing_ok:
                    return None
                raise ProviderError(f"GCP {where}: {exc.message}") from None
            except gexc.Conflict as exc:
                if conflict_ok:
                    return None
                raise ProviderError(f"GCP {where}: {exc.message}") from None
            except Exception as exc:
                err = _translate_exc(exc, where, placement, project_wide)
                if not isinstance(err, TransientError) or attempt + 1 == CALL_ATTEMPTS:
                    raise err from exc
                time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
        raise AssertionError("unreachable")

    def wait(self, zone: str, operation: str, placement: Placement | None = None) -> None:
        """Until the zone operation is DONE; its error becomes a Skyform error."""
        self._wait(self.ops.wait, zone, operation, placement, None, zone=zone)

    def wait_global(self, operation: str, project_wide: str) -> None:
        """Until the global operation (on `project_wide`, a firewall rule) is DONE."""
        self._wait(self.global_ops.wait, GLOBAL, operation, None, project_wide)

    def _wait(
        self,
        fn: Callable[..., Any],
        where: str,
        operation: str,
        placement: Placement | None,
        project_wide: str | None,
        **scope: Any,
    ) -> None:
        # GCE's wait returns when the operation is done or after about two minutes.
        deadline = time.monotonic() + self.op_timeout
        while True:
            op = self.call(
                fn,
                where,
                placement,
                project_wide=project_wide,
                project=self.project,
                operation=operation,
                **scope,
            )
            if op.status == compute_v1.Operation.Status.DONE:
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"GCP {where}: operation {operation} not done in time")
        errors = list(op.error.errors) if op.error else []
        if errors:
            codes = [e.code for e in errors]
            message = "; ".join(e.message for e in errors)
            raise translate(codes, message, where, placement, project_wide)

    def insert(self, zone: str, body: dict[str, Any], placement: Placement) -> None:
        """Create one instance and wait for it; an existing one (a retried launch) is fine."""
        resource = compute_v1.Instance.from_json(json.dumps(body))
        op = self.call(
            self.instances.insert_unary,
            zone,
            placement,
            conflict_ok=True,
            project=self.project,
            zone=zone,
            instance_resource=resource,
        )
        if op is not None:
            self.wait(zone, op.name, placement)

    def get(self, zone: str, name: str) -> dict[str, Any] | None:
        found = self.call(
            self.instances.get,
            zone,
            missing_ok=True,
            project=self.project,
            zone=zone,
            instance=name,
        )
        return None if found is None else to_dict(found)

    def owned(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Skyform's instances in every zone: one aggregated list by label."""
        # GCE's filter syntax: parenthesized expressions are ANDed; `:*` tests presence.
        terms = ["labels.skyform-id:*"] + [f'labels.{k} = "{v}"' for k, v in labels.items()]
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.project, filter=" ".join(f"({t})" for t in terms), max_results=500
        )

        def listed(**kwargs: Any) -> list[dict[str, Any]]:
            pages = self.instances.aggregated_list(**kwargs)
            return [to_dict(i) for _, scoped in pages for i in scoped.instances]

        out: list[dict[str, Any]] = self.call(listed, "all zones", request=request)
        return out

    def set_labels(
        self, zone: str, instance: dict[str, Any], labels: Mapping[str, str | None]
    ) -> None:
        """Add `labels` to the instance's own (a None value removes its key), with the label
        fingerprint GCE requires (a label change since `instance` was read is refused, as GCE
        guards against lost updates); nothing is called when the labels would not change."""
        current = dict(instance.get("labels") or {})
        merged = {**current, **labels}
        wanted = {k: v for k, v in merged.items() if v is not None}
        if wanted == current:
            return
        body = compute_v1.InstancesSetLabelsRequest(
            labels=wanted, label_fingerprint=instance.get("labelFingerprint", "")
        )
        op = self.call(
            self.instances.set_labels_unary,
            zone,
            project=self.project,
            zone=zone,
            instance=instance["name"],
            instances_set_labels_request_resource=body,
        )
        self.wait(zone, op.name)

    def act(self, verb: str, zone: str, name: str, wait: bool) -> None:
        """delete/stop/start one instance; an instance already gone is fine."""
        fn = getattr(self.instances, f"{verb}_unary")
        op = self.call(fn, zone, missing_ok=True, project=self.project, zone=zone, instance=name)
        if op is not None and wait:
            self.wait(zone, op.name)

    def set_tags(self, zone: str, instance: dict[str, Any], tags: list[str]) -> None:
        """Add `tags` to the instance's network tags, with the fingerprint GCE requires;
        nothing is called when it has them all."""
        current = dict(instance.get("tags") or {})
        items = list(current.get("items") or [])
        wanted = items + [t for t in tags if t not in items]
        if wanted == items:
            return
        body = compute_v1.Tags(items=wanted, fingerprint=current.get("fingerprint", ""))
        op = self.call(
            self.instances.set_tags_unary,
            zone,
            project=self.project,
            zone=zone,
            instance=instance["name"],
            tags_resource=body,
        )
        self.wait(zone, op.name)

    # ---- firewall rules (global) ------------------------------------------------------------

    def get_firewall(self, name: str) -> dict[str, Any] | None:
        found = self.call(
            self.firewalls.get,
            GLOBAL,
            missing_ok=True,
            project_wide=f"firewall rule {name}",
            project=self.project,
            firewall=name,
        )
        return None if found is None else to_dict(found)

    def ensure_firewall(self, body: dict[str, Any]) -> None:
        """The rule as `body` says: inserted, or an existing one (a retried or earlier launch,
        or one that won a race) adopted and patched where it differs; nothing is called past
        the first get when it already agrees. Its network cannot change, so is not compared."""
        name, what = str(body["name"]), f"firewall rule {body['name']}"
        found = self.get_firewall(name)
        if found is None:
            op = self.call(
                self.firewalls.insert_unary,
                GLOBAL,
                conflict_ok=True,
                project_wide=what,
                project=self.project,
                firewall_resource=compute_v1.Firewall.from_json(json.dumps(body)),
            )
            if op is not None:
                self.wait_global(op.name, what)
                return
            found = self.get_firewall(name)  # inserted meanwhile by another launch
            if found is None:
                raise TransientError(f"GCP {what} was made and deleted meanwhile; retry", 2.0)
        changed = {k: v for k, v in body.items() if k != "network" and found.get(k) != v}
        if not changed:
            return
        op = self.call(
            self.firewalls.patch_unary,
            GLOBAL,
            project_wide=what,
            project=self.project,
            firewall=name,
            firewall_resource=compute_v1.Firewall.from_json(json.dumps(changed)),
        )
        self.wait_global(op.name, what)

    def delete_firewall(self, name: str) -> None:
        """Delete the rule and wait for it; one already gone is fine."""
        what = f"firewall rule {name}"
        op = self.call(
            self.firewalls.delete_unary,
            GLOBAL,
            missing_ok=True,
            project_wide=what,
            project=self.project,
            firewall=name,
        )
        if op is not None:
            self.wait_global(op.name, what)
