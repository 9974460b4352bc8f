"""The plan as a pull-request comment: summary and cost first, a collapsible block per resource.

GitHub refuses comments over 65,536 characters; details are cut to fit, never the summary.
"""

from __future__ import annotations

from planner.plan import Action, Change, Plan
from planner.render_text import (
    SYMBOL,
    VERB,
    diff_entries,
    money,
    placement_text,
    summary_line,
    value_text,
)
from planner.spec import flatten

LIMIT = 65_536
_ICON = {
    Action.CREATE: "🟢",
    Action.UPDATE: "🟡",
    Action.REPLACE: "🟣",
    Action.DELETE: "🔴",
    Action.NOOP: "⚪",
}
# A ```diff block colours "!" lines as changed; "~" has no colour there.
_DIFF_SIGN = {"~": "!"}


def _head(plan: Plan) -> list[str]:
    lines = [f"### Skyform plan: {summary_line(plan).removeprefix('Plan: ')}"]
    if plan.repo_commit:
        lines.append(f"Commit `{plan.repo_commit[:12]}` · state serial {plan.serial}")
    lines.append("")
    if plan.errors:
        lines.append(
            f"**❌ Plan failed with {len(plan.errors)} error(s); nothing can be applied.**"
        )
    for f in plan.findings:
        where = f"`{f.address}`: " if f.address else ""
        mark = "❌" if f.severity == "error" else "⚠️"
        lines.append(f"- {mark} {where}{f.message}")
    for what in plan.summary.interrupts:
        lines.append(f"- ⚠️ This plan {what}.")
    lines.append("")
    return lines


def _table(changes: list[Change]) -> list[str]:
    lines = ["| | resource | action | placement | $/h before → after |", "|---|---|---|---|---|"]
    for c in changes:
        where = placement_text(c.placement).replace("|", "\\|") if c.placement else "—"
        cost = f"{money(c.cost_before)} → {money(c.cost_after)}"
        lines.append(f"| {_ICON[c.action]} | `{c.address}` | {c.action.value} | {where} | {cost} |")
    return lines


def _details(c: Change) -> str:
    body: list[str] = []
    for reason in c.reasons:
        body.append(f"# {reason}")
    if c.action in (Action.CREATE, Action.DELETE):
        sign = "+" if c.action == Action.CREATE else "-"
        for path, value in sorted(flatten((c.after if sign == "+" else c.before) or {}).items()):
            body.append(f"{sign} {path} = {_one_line(value)}")
    else:
        for sign, path, value in diff_entries(c, _one_line):
            body.append(f"{_DIFF_SIGN.get(sign, sign)} {path} = {value}")
    if c.failover:
        body.append("# failover order:")
        body.extend(f"#   {i}. {placement_text(p)}" for i, p in enumerate(c.failover, 2))
    code = "\n".join(body).replace("```", "ʼʼʼ")
    summary = f"{SYMBOL[c.action]} <code>{c.address}</code> {VERB[c.action]}"
    return f"<details><summary>{summary}</summary>\n\n```diff\n{code}\n```\n\n</details>\n"


def _one_line(value: object) -> str:
    text = value_text(value)
    return text if len(text) <= 200 else text[:197] + "..."


def render_markdown(plan: Plan, *, limit: int = LIMIT) -> str:
    head = "\n".join(_head(plan)) + "\n"
    acting = [c for c in plan.changes if c.action != Action.NOOP]
    if not acting:
        return head + "No changes. The live resources match the repo.\n"
    tail = "\n_Run `skyform plan` locally for the full plan._\n"
    budget = limit - len(head) - len(tail) - 200
    out = [head]
    used = 0
    rows = _table(acting)
    shown_rows = 0
    for row in rows:
        if used + len(row) + 1 > budget // 2:
            break
        out.append(row + "\n")
        used += len(row) + 1
        shown_rows += 1
    if shown_rows < len(rows):
        out.append(f"\n_… {len(rows) - shown_rows} more rows not shown._\n")
    out.append("\n")
    cut = 0
    for c in acting:
        block = _details(c)
        if used + len(block) > budget:
            cut += 1
            continue
        out.append(block)
        used += len(block)
    if cut:
        out.append(f"\n_Details of {cut} resource(s) cut to fit a comment.{tail.strip()}_\n")
    return "".join(out)
