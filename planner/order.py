"""Dependency order: what applies first, and which resources a `--target` pulls in."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from planner.plan import Action, Change


class _HasDeps(Protocol):
    @property
    def address(self) -> str: ...


def _deps(item: Any) -> tuple[str, ...]:
    if hasattr(item, "skyform"):
        return tuple(item.skyform.depends_on)
    return tuple(getattr(item, "depends_on", ()))


def with_dependencies(
    targets: Iterable[str], desired: Mapping[str, Any], observed: Mapping[str, Any]
) -> set[str]:
    """The targets plus everything they depend on, transitively (as terraform -target)."""
    scope: set[str] = set()
    stack = list(targets)
    while stack:
        address = stack.pop()
        if address in scope:
            continue
        scope.add(address)
        item = desired.get(address) or observed.get(address)
        if item is not None:
            stack.extend(_deps(item))
    return scope


def _topological(nodes: Sequence[str], deps: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Dependencies first; ties by address, so the order is deterministic (Kahn's algorithm)."""
    members = set(nodes)
    waiting = {n: {d for d in deps.get(n, ()) if d in members and d != n} for n in nodes}
    dependents: dict[str, list[str]] = {}
    for node, ds in waiting.items():
        for dep in ds:
            dependents.setdefault(dep, []).append(node)
    ready = [n for n, ds in waiting.items() if not ds]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for other in dependents.get(node, ()):
            waiting[other].discard(node)
            if not waiting[other]:
                heapq.heappush(ready, other)
    # Cycles are refused when the repo loads; anything left here is ordered by address.
    done = set(order)
    order.extend(sorted(n for n in nodes if n not in done))
    return order


def apply_order(changes: Sequence[Change]) -> tuple[str, ...]:
    """Creates, updates and replaces in dependency order, then deletes in reverse order."""
    acting = [c for c in changes if c.action != Action.NOOP]
    deps = {c.address: c.depends_on for c in acting}
    forward = [c.address for c in acting if c.action != Action.DELETE]
    backward = [c.address for c in acting if c.action == Action.DELETE]
    ordered = _topological(forward, deps)
    gone = list(reversed(_topological(backward, deps)))
    return tuple(ordered + gone)
