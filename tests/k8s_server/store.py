"""The fake API server's object store: Kubernetes objects as JSON dicts keyed by resource,
namespace and name, with server-set metadata (uid, resourceVersion, creationTimestamp), label
and field selectors, and the 404/409 semantics of the real API server.
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One served resource: its plural, API group/version, kind and scope."""

    plural: str
    group_version: str  # "v1" for the core group
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()


KINDS = {
    k.plural: k
    for k in (
        Kind("namespaces", "v1", "Namespace", False, ("ns",)),
        Kind("nodes", "v1", "Node", False, ("no",)),
        Kind("pods", "v1", "Pod", True, ("po",)),
        Kind("services", "v1", "Service", True, ("svc",)),
        Kind("events", "v1", "Event", True, ("ev",)),
        Kind("configmaps", "v1", "ConfigMap", True, ("cm",)),
        Kind("leases", "coordination.k8s.io/v1", "Lease", True),
    )
}


class ApiError(Exception):
    """An error the server answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label_term_matches(term: str, labels: dict[str, str]) -> bool:
    term = term.strip()
    if " notin " in term or " in " in term:
        negate = " notin " in term
        key, _, values = term.partition(" notin " if negate else " in ")
        choices = {v.strip() for v in values.strip().strip("()").split(",")}
        present = labels.get(key.strip()) in choices
        return not present if negate else present
    if "!=" in term:
        key, _, value = term.partition("!=")
        return labels.get(key.strip()) != value.strip()
    if "=" in term:
        key, _, value = term.partition("==" if "==" in term else "=")
        return labels.get(key.strip()) == value.strip()
    if term.startswith("!"):
        return term[1:].strip() not in labels
    return term in labels


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside a `key in (a,b)` value list."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def label_matches(selector: str | None, obj: Obj) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(_label_term_matches(t, labels) for t in _split_terms(selector or ""))


def _field_value(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_matches(selector: str | None, obj: Obj) -> bool:
    for term in _split_terms(selector or ""):
        if "!=" in term:
            path, _, value = term.partition("!=")
            if _field_value(obj, path.strip()) == value.strip():
                return False
        else:
            path, _, value = term.partition("==" if "==" in term else "=")
            if _field_value(obj, path.strip()) != value.strip():
                return False
    return True


class ObjectStore:
    """Thread-safe; every read returns a deep copy so callers never alias stored objects."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 0

    def _bump(self, obj: Obj) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def create(self, plural: str, namespace: str, obj: Obj) -> Obj:
        kind = KINDS[plural]
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind.kind} name is required")
            if kind.namespaced:
                if ("namespaces", "", namespace) not in self._objects:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
                meta["namespace"] = namespace
            key = (plural, namespace if kind.namespaced else "", name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            meta.setdefault("generation", 1)
            obj["kind"], obj["apiVersion"] = kind.kind, kind.group_version
            self._bump(obj)
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self._get(plural, namespace, name))

    def _get(self, plural: str, namespace: str, name: str) -> Obj:
        ns = namespace if KINDS[plural].namespaced else ""
        obj = self._objects.get((plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def list(
        self,
        plural: str,
        namespace: str | None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> list[Obj]:
        with self.lock:
            out = []
            for (p, ns, _), obj in sorted(self._objects.items()):
                if p != plural or (namespace is not None and ns != namespace):
                    continue
                if label_matches(labels, obj) and field_matches(fields, obj):
                    out.append(copy.deepcopy(obj))
            return out

    def replace(self, plural: str, namespace: str, name: str, obj: Obj, part: str) -> Obj:
        """PUT: `part` is "spec" (everything but status) or "status" (only status); a stale
        resourceVersion in the body is a 409 Conflict, as optimistic concurrency requires."""
        with self.lock:
            current = self._get(plural, namespace, name)
            sent_rv = (obj.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'the object "{name}" has been modified')
            return self._write(current, obj, part)

    def update(
        self, plural: str, namespace: str, name: str, changes: Obj, part: str,
        strategic: bool = False,
    ) -> Obj:  # fmt: skip
        """A merge patch (RFC 7386) of `changes` into the object; `strategic`: a strategic merge
        patch, which merges the keyed lists of `MERGE_KEYS` item by item instead of replacing
        them (what the official client sends for a dict body)."""
        with self.lock:
            current = self._get(plural, namespace, name)
            merged = merge_patch(copy.deepcopy(current), changes, strategic)
            return self._write(current, merged, part)

    def _write(self, current: Obj, new: Obj, part: str) -> Obj:
        if part == "status":
            current["status"] = copy.deepcopy(new.get("status") or {})
        else:
            status = current.get("status")
            meta = current["metadata"]
            fixed = {k: meta[k] for k in ("uid", "creationTimestamp", "namespace") if k in meta}
            spec_changed = new.get("spec") != current.get("spec")
            current.clear()
            current.update(copy.deepcopy(new))
            current["metadata"] = {**(new.get("metadata") or {}), **fixed}
            current["metadata"]["generation"] = meta.get("generation", 1) + int(spec_changed)
            if status is not None:
                current["status"] = status
        self._bump(current)
        return copy.deepcopy(current)

    def delete(
        self, plural: str, namespace: str, name: str, preconditions: Obj | None = None
    ) -> Obj:
        """Delete the object; `preconditions` (DeleteOptions': `uid`, `resourceVersion`) that
        the object no longer meets are a 409 Conflict, as on the real API server."""
        with self.lock:
            obj = self._get(plural, namespace, name)
            meta = obj["metadata"]
            for field in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field)
                if wanted and wanted != meta.get(field):
                    raise ApiError(
                        409, "Conflict",
                        f'Operation cannot be fulfilled on {plural} "{name}": Precondition '
                        f"failed: {field} in precondition: {wanted}, "
                        f"in object meta: {meta.get(field)}",
                    )  # fmt: skip
            ns = namespace if KINDS[plural].namespaced else ""
            del self._objects[(plural, ns, name)]
            if plural == "namespaces":  # namespace deletion cascades to what it holds
                for key in [k for k in self._objects if k[1] == name]:
                    del self._objects[key]
            self._bump(obj)
            return copy.deepcopy(obj)


# Strategic merge: the keyed lists of the kinds served and their merge keys (the first one
# the patch's items carry: a Service's ports merge by `port`, a container's by `containerPort`).
MERGE_KEYS = {
    "ports": ("port", "containerPort"),
    "containers": ("name",),
    "env": ("name",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
}


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif strategic and key in MERGE_KEYS and isinstance(value, list):
            target[key] = _merge_list(target.get(key), value, MERGE_KEYS[key])
        else:
            target[key] = merge_patch(target.get(key), value, strategic)
    return target


def _merge_list(target: Any, patch: list[Any], keys: tuple[str, ...]) -> list[Any]:
    """A keyed list merged as a strategic merge patch does: a patch item with the merge key of
    an existing item is merged into it, any other is appended; nothing is removed."""
    key = next((k for k in keys if all(isinstance(i, dict) and k in i for i in patch)), None)
    if key is None or not isinstance(target, list):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target)
    for item in patch:
        at = next(
            (i for i, t in enumerate(out) if isinstance(t, dict) and t.get(key) == item[key]), None
        )
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = merge_patch(out[at], item, strategic=True)
    return out
