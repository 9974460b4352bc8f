"""The plan for a terminal, in terraform's shape: summary first, then `# X will be created` blocks.

A function of the Plan alone; colour (ANSI) only when the caller says the output is a TTY.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from planner.plan import KNOWN_AFTER_APPLY, SENSITIVE, Action, Change, PlacementView, Plan
from planner.spec import flatten

SYMBOL = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "-/+",
    Action.DELETE: "-",
    Action.NOOP: " ",
}
VERB = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in-place",
    Action.REPLACE: "must be replaced",
    Action.DELETE: "will be destroyed",
    Action.NOOP: "is unchanged",
}
_ANSI = {"+": "32", "~": "33", "-/+": "35", "-": "31", "!": "1;31", "b": "1"}


def money(value: float) -> str:
    return f"${value:,.2f}/h" if value >= 0.01 or value == 0 else f"${value:.4f}/h"


def summary_line(plan: Plan) -> str:
    s = plan.summary
    head = (
        f"Plan: {s.create} to create, {s.update} to update, {s.replace} to replace, "
        f"{s.delete} to delete"
    )
    extra = [f"{s.noop} unchanged"] if s.noop else []
    if s.orphaned:
        extra.append(f"{s.orphaned} undeclared but kept (prune off)")
    if extra:
        head += f" ({', '.join(extra)})"
    sign = "+" if plan.cost.delta >= 0 else "-"
    cost = (
        f"{money(plan.cost.now)} -> {money(plan.cost.after)} ({sign}{money(abs(plan.cost.delta))})"
    )
    return f"{head}. Cost: {cost}."


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    if value in (SENSITIVE, KNOWN_AFTER_APPLY):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def diff_entries(c: Change, text: Callable[[Any], str] = value_text) -> list[tuple[str, str, str]]:
    """The field diffs of an update or replace as (sign, path, value): "+" added, "-" removed,
    "~" changed with value "before -> after"; a field that forces the replacement says so."""
    entries = []
    for d in c.diffs:
        if d.before is None:
            sign, value = "+", text(d.after)
        elif d.after is None:
            sign, value = "-", text(d.before)
        else:
            sign, value = "~", f"{text(d.before)} -> {text(d.after)}"
        if d.forces_replacement and c.action == Action.REPLACE:
            value += "  # forces replacement"
        entries.append((sign, d.path, value))
    return entries


def placement_text(p: PlacementView) -> str:
    parts = [p.infra]
    if p.instance_type:
        parts.append(p.instance_type)
    if p.accelerators:
        parts.append(", ".join(f"{k}:{v:g}" for k, v in p.accelerators.items()))
    if p.use_spot:
        parts.append("spot")
    nodes = f"{p.num_nodes} node{'s' if p.num_nodes != 1 else ''}"
    return f"{' '.join(parts)} ({nodes}) {money(p.hourly_cost)}"


class _Out:
    def __init__(self, color: bool) -> None:
        self.lines: list[str] = []
        self.color = color

    def add(self, text: str = "", style: str | None = None) -> None:
        if self.color and style in _ANSI and text:
            text = f"\x1b[{_ANSI[style]}m{text}\x1b[0m"
        self.lines.append(text)


def _attr_lines(out: _Out, sign: str, attrs: dict[str, Any], width: int) -> None:
    for path, value in attrs.items():
        text = value_text(value)
        if isinstance(value, str) and "\n" in value:
            out.add(f"      {sign} {path:<{width}} = <<-EOT", sign)
            for line in value.rstrip("\n").split("\n"):
                out.add(f"            {line}")
            out.add("        EOT")
        else:
            out.add(f"      {sign} {path:<{width}} = {text}", sign)


def _change_block(out: _Out, c: Change) -> None:
    sym = SYMBOL[c.action]
    kind, _, name = c.address.partition(".")
    out.add(f"  # {c.address} {VERB[c.action]}", "b")
    for reason in c.reasons:
        out.add(f"  # ({reason})")
    out.add(f"{sym:>3} {kind} {json.dumps(name)} {{", sym)
    if c.action == Action.CREATE:
        attrs = dict(sorted(flatten(c.after or {}).items()))
        if c.kind == "service":
            attrs["endpoint"] = KNOWN_AFTER_APPLY
        _attr_lines(out, "+", attrs, max((len(k) for k in attrs), default=0))
    elif c.action == Action.DELETE:
        attrs = dict(sorted(flatten(c.before or {}).items()))
        _attr_lines(out, "-", attrs, max((len(k) for k in attrs), default=0))
    else:
        width = max((len(d.path) for d in c.diffs), default=0)
        for sign, path, value in diff_entries(c):
            out.add(f"      {sign} {path:<{width}} = {value}", sign)
        hidden = len(flatten(c.after or {})) - len(c.diffs)
        if hidden > 0:
            out.add(f"        # ({hidden} unchanged attributes hidden)")
    out.add("    }")
    if c.placement is not None and c.action != Action.DELETE:
        label = "placement" if c.action in (Action.CREATE, Action.REPLACE) else "runs on"
        out.add(f"    {label}: {placement_text(c.placement)}")
    if c.failover:
        out.add("    failover order:")
        for i, p in enumerate(c.failover, start=2):
            out.add(f"      {i}. {placement_text(p)}")
    if c.interrupts:
        out.add(f"    ! {c.interrupts}", "!")
    out.add()


def render_text(plan: Plan, *, color: bool = False, show_unchanged: bool = False) -> str:
    out = _Out(color)
    out.add(summary_line(plan), "b")
    for what in plan.summary.interrupts:
        out.add(f"! This plan {what}.", "!")
    for f in plan.findings:
        where = f"{f.address}: " if f.address else ""
        out.add(f"{f.severity}: {where}{f.message}", "!" if f.severity == "error" else "~")
    acting = [c for c in plan.changes if c.action != Action.NOOP]
    quiet = [c for c in plan.changes if c.action == Action.NOOP]
    out.add()
    if not acting:
        out.add("No changes. The live resources match the repo.")
    else:
        out.add("Skyform will perform the following actions:")
        out.add()
        by_address = {c.address: c for c in acting}
        for address in plan.order:
            _change_block(out, by_address[address])
    noted = [c for c in quiet if c.reasons or c.drift or show_unchanged]
    for c in noted:
        why = "; ".join(c.reasons) or "unchanged"
        where = f" on {placement_text(c.placement)}" if c.placement else ""
        out.add(f"  = {c.address}{where}: {why}")
    if noted:
        out.add()
    if acting:
        out.add(summary_line(plan), "b")
    if plan.errors:
        out.add(f"Plan failed: {len(plan.errors)} error(s) above; nothing can be applied.", "!")
    return "\n".join(out.lines) + "\n"
