"""`skyform plan` and `skyform show`: what apply would do, for people, PR comments and tools."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from planner.plan import Plan, PlanFormatError, from_json, to_json
from planner.render_markdown import render_markdown
from planner.render_text import render_text
from reconciler.cli.common import env_option, parse_env_pairs
from reconciler.context import build_plan, load_desired, open_state, repo_commit
from schema.errors import SkyformError, SpecError

FORMATS = click.Choice(["text", "markdown", "json"])


def register(group: click.Group) -> None:
    group.add_command(plan)
    group.add_command(show)


def render(plan: Plan, fmt: str) -> str:
    if fmt == "json":
        return to_json(plan)
    if fmt == "markdown":
        return render_markdown(plan)
    return render_text(plan, color=sys.stdout.isatty())


def exit_code(plan: Plan, detailed: bool) -> int:
    """terraform's codes: 0 nothing to do, 1 error, 2 changes (with --detailed-exitcode)."""
    if plan.errors:
        return 1
    return 2 if detailed and plan.summary.changes else 0


def print_spec_error(exc: SpecError) -> None:
    for d in exc.diagnostics:
        click.echo(d.format(), err=True)
    errors = len(exc.errors)
    click.echo(f"Plan failed: the repo has {errors} error(s); nothing was planned.", err=True)


@click.command()
@click.argument("path", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Save the plan.")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when the plan changes something.")
@click.option("--target", "targets", multiple=True, metavar="ADDR", help="Plan only ADDR.")
@click.option("--refresh/--no-refresh", default=True, help="Ask providers what is really live.")
@click.option("--state", "state_url", metavar="URL", help="State store URL.")
@env_option
def plan(
    path: Path,
    out: Path | None,
    fmt: str,
    detailed_exitcode: bool,
    targets: tuple[str, ...],
    refresh: bool,
    state_url: str | None,
    env: tuple[str, ...],
) -> None:
    """Show what `skyform apply` would change, where each resource would run, and the cost."""
    try:
        desired = load_desired(path, parse_env_pairs(env))
    except SpecError as exc:
        print_spec_error(exc)
        raise SystemExit(1) from None
    try:
        with open_state(state_url, desired) as store:
            result = build_plan(desired, store, commit=repo_commit(path), targets=targets)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    if out is not None:
        out.write_text(to_json(result))
    click.echo(render(result, fmt), nl=False)
    if out is not None and fmt != "json":
        click.echo(f"Saved the plan to {out}; apply exactly this with: skyform apply {out}")
    raise SystemExit(exit_code(result, detailed_exitcode))


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def show(file: Path, fmt: str) -> None:
    """Render a plan saved with `skyform plan --out FILE`."""
    try:
        saved = from_json(file.read_text())
    except PlanFormatError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    click.echo(render(saved, fmt), nl=False)
