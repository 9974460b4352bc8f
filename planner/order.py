"""Dependency order: what applies first, and which resources a `--target` pulls in."""

from __future__ import annotations

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
    pending = {n: {d for d in deps.get(n, ()) if d in deps} for n in nodes}
    order: list[str] = []
    ready = sorted(n for n, ds in pending.items() if not ds)
    while ready:
        node = ready.pop(0)
        order.append(node)
        for other in sorted(pending):
            if node in pending[other]:
                pending[other].discard(node)
                if not pending[other] and other not in order and other not in ready:
                    ready.append(other)
        ready.sort()
        pending.pop(node, None)
    # Cycles are refused when the repo loads; anything left here is ordered by address.
    order.extend(sorted(n for n in pending if n not in order))
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
