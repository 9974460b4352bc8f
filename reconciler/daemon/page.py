"""The read-only HTML status page: resources, status, placement, last sync and last plan."""

from __future__ import annotations

import time
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}
td,th{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.bad{color:#b00}.ok{color:#070}pre{background:#f7f7f7;
padding:.6rem;overflow:auto;max-height:30rem}code{font-size:90%}
"""


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _short(commit: str | None) -> str:
    return escape(commit[:12]) if commit else "-"


def _resources(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p id="no-resources">No resources are managed yet.</p>'
    head = "".join(
        f"<th>{h}</th>" for h in ("Address", "Kind", "Status", "Placement", "$/h", "Endpoint")
    )
    body = []
    for r in rows:
        status = escape(str(r["status"])) + (
            f' <span class="bad">(drift: {escape(r["drift"])})</span>' if r.get("drift") else ""
        )
        body.append(
            f'<tr data-address="{escape(r["address"])}"><td>{escape(r["address"])}</td>'
            f'<td>{escape(r["kind"])}</td><td class="status">{status}</td>'
            f"<td>{escape(r.get('placement') or '-')}</td>"
            f"<td>{float(r.get('cost_per_hour') or 0):.2f}</td>"
            f"<td>{escape(r.get('endpoint') or '-')}</td></tr>"
        )
    return f'<table id="resources"><tr>{head}</tr>{"".join(body)}</table>'


def _sync(s: dict[str, Any] | None) -> str:
    if not s:
        return '<p id="last-sync">No sync has run yet.</p>'
    cls = "ok" if s["outcome"] in ("in-sync", "applied", "planned", "up-to-date") else "bad"
    msg = f"<br><code>{escape(s['message'])}</code>" if s.get("message") else ""
    return (
        f'<p id="last-sync">{_when(s.get("finished_at"))} ({escape(s["trigger"])}): '
        f'<b class="{cls}" id="outcome">{escape(s["outcome"])}</b> at commit '
        f"<code>{_short(s.get('commit'))}</code>{msg}</p>"
    )


def render(status: dict[str, Any]) -> str:
    plan = status.get("last_plan") or {}
    invalid = status.get("invalid_commit")
    alerts = ""
    if invalid:
        alerts += (
            f'<p class="bad" id="invalid">Commit <code>{_short(invalid["commit"])}</code> failed '
            "validation; nothing from it was applied:"
            f"<br><code>{escape(invalid['error'])}</code></p>"
        )
    if status.get("source_error"):
        alerts += f'<p class="bad" id="source-error">{escape(status["source_error"])}</p>'
    cost = float(status.get("cost_per_hour") or 0.0)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>Skyform reconcile: {escape(status["branch"])}</title><style>{_STYLE}</style></head>
<body><h1>Skyform reconcile</h1>
<p>Repo <code>{escape(status["repo"])}</code> branch <code>{escape(status["branch"])}</code>;
this replica is <b id="role">{escape(status["role"])}</b>.
Head <code>{_short(status.get("head_commit"))}</code>, last applied
<code id="applied">{_short(status.get("last_applied_commit"))}</code>,
last successful sync {_when(status.get("last_successful_sync_at"))}.</p>
{alerts}
<h2>Last sync</h2>{_sync(status.get("last_sync"))}
<h2>Resources <small>(${cost:.2f}/h)</small></h2>{_resources(status.get("resources") or [])}
<h2>Last plan</h2><p id="plan-summary">{escape(plan.get("summary") or "no plan yet")}</p>
<pre id="plan">{escape(plan.get("text") or "")}</pre>
</body></html>
"""
