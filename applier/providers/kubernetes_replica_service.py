"""A service's ClusterIP Service in one namespace: it belongs to the service's address, not to
one replica, so it is claimed by every replica launch and deleted only when no replica of that
address is left there.

Without a lock shared by launches and terminates, the order of calls makes it safe:
- a launch creates its pods first, then claims the Service: a merge patch that writes a new
  `CLAIM` annotation (so the resourceVersion always changes) and this version's ports (so the
  ports follow a rolling update), or creates it when it is missing;
- a terminate deletes its pods, reads the Service, lists the replica pods left, and deletes the
  Service only if there are none, on the precondition of the uid and resourceVersion it read.
A launch that claims after that read makes the delete a 409 (the Service is kept); one that
claimed before it has pods the list sees; one that claims after the delete makes it again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kubernetes import client

from applier.provider import LaunchRequest
from applier.providers import kubernetes_gang as gang
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes_api import Api, status_code
from schema.errors import ProviderError

log = logging.getLogger(__name__)

CLAIM_TRIES = 3  # patch-or-create rounds against a Service deleted and made concurrently
MERGE_PATCH = "application/merge-patch+json"  # a dict body otherwise goes as strategic merge


def claim(api: Api, ns: str, req: LaunchRequest) -> None:
    """Claim the Service for `req`'s replica (whose pods exist): patch its claim and ports, or
    create it. A ProviderError (or TransientError) when the API server refuses."""
    name = pods.replica_service_name(req.address)
    for _ in range(CLAIM_TRIES):
        mark = f"{req.skyform_id} {time.time():.6f}"
        try:
            api.call(
                f"patch service {name}", api.core.patch_namespaced_service, name, ns,
                pods.service_claim_patch(req, mark), _content_type=MERGE_PATCH,
            )  # fmt: skip
            return
        except ProviderError as exc:
            if status_code(exc) != 404:
                raise
        try:
            api.call(
                f"create service {name}", api.core.create_namespaced_service, ns,
                pods.cluster_ip_service(req, mark),
            )  # fmt: skip
            return
        except ProviderError as exc:
            if status_code(exc) != 409:  # another replica's launch made it meanwhile: claim it
                raise
    raise ProviderError(
        f"{req.address}: service {name} in {ns} was deleted and made again "
        f"{CLAIM_TRIES} times while this replica claimed it"
    )


def release(api: Api, ns: str, address: str, skyform_id: str) -> None:
    """Delete the Service if no replica of `address` but `skyform_id`'s (whose pods are being
    deleted) is left in `ns`, unless a replica launch claimed it since it was read."""
    name = pods.replica_service_name(address)
    try:
        current: Any = api.call(f"read service {name}", api.core.read_namespaced_service, name, ns)
    except ProviderError as exc:
        if status_code(exc) == 404:
            return
        raise
    labels = ",".join(f"{k}={v}" for k, v in pods.replica_selector(address).items())
    mine = pods.label_value(skyform_id)
    others = [
        p for p in gang.list_pods(api, ns, labels)
        if (p.metadata.labels or {}).get(pods.ID) != mine and not p.metadata.deletion_timestamp
    ]  # fmt: skip
    if others:
        return
    meta = current.metadata
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=meta.uid, resource_version=meta.resource_version)
    )
    try:
        api.call_ok_missing(
            f"delete service {name}", api.core.delete_namespaced_service, name, ns, body=options
        )
    except ProviderError as exc:
        if status_code(exc) != 409:
            raise
        log.info("%s: service %s in %s kept: a replica launched meanwhile claimed it", address,
                 name, ns)  # fmt: skip
