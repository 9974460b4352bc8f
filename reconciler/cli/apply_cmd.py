"""`skyform apply` and `skyform destroy`: plan (or load a saved plan), confirm, converge."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import click

from applier.actions import Env
from applier.execute import ApplyResult, Executor, StalePlanError, check_fresh
from applier.refresh import recover_journal
from planner.catalog import load_shipped_catalog
from planner.diff import PlanInputs, make_plan
from planner.plan import Action, Plan, PlanFormatError, from_json
from planner.render_text import render_text
from reconciler.cli.common import env_option, parse_env_pairs
from reconciler.cli.lease import locked, who
from reconciler.cli.plan_cmd import print_spec_error
from reconciler.cli.ssh_cmd import update_ssh_config
from reconciler.context import (
    build_plan,
    load_desired,
    observed_from,
    open_state,
    provider_settings,
    providers,
    repo_commit,
    skyform_home,
)
from schema.errors import SkyformError, SpecError
from schema.repo import DesiredState
from schema.repo_config import RepoConfig
from state import Store


def register(group: click.Group) -> None:
    group.add_command(apply)
    group.add_command(destroy)


def _confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(f"refusing to {what} without a terminal; pass --yes")
    if not click.confirm(f"Do you want to {what}?", default=False):
        raise click.ClickException("cancelled; nothing was changed")


def _progress(address: str, message: str) -> None:
    click.echo(f"  {address}: {message}")


def run_plan(
    plan: Plan, desired: DesiredState, store: Store, env: Env, parallelism: int
) -> ApplyResult:
    run = store.begin_run("apply", who(), plan.repo_commit, None)
    plan_id = uuid.uuid4().hex
    result = Executor(
        plan, desired, store, env, plan_id=plan_id, parallelism=parallelism, notify=_progress
    ).run()
    outcome = "ok" if result.ok else "failed"
    store.finish_run(run.id, outcome, "; ".join(result.failed.values())[:2000])
    return result


def _report(result: ApplyResult, verb: str) -> None:
    for address, attempts in sorted(result.attempts.items()):
        if len(attempts) > 1:
            click.echo(f"  {address}: placed after {len(attempts)} attempts:")
            for i, a in enumerate(attempts, 1):
                click.echo(f"    {i}. {a.placement}: {a.outcome} {a.message}".rstrip())
    for address, why in sorted(result.skipped.items()):
        click.echo(f"  {address}: skipped ({why})", err=True)
    for message in result.failed.values():
        click.echo(f"Error: {message}", err=True)
    done = len(result.done)
    if result.ok:
        click.echo(f"{verb} complete: {done} resource(s) changed.")
    else:
        click.echo(
            f"{verb} incomplete: {done} done, {len(result.failed)} failed, "
            f"{len(result.skipped)} skipped. State is saved; re-run to continue.",
            err=True,
        )


def _load(path: Path, env: tuple[str, ...]) -> DesiredState:
    try:
        return load_desired(path, parse_env_pairs(env))
    except SpecError as exc:
        print_spec_error(exc)
        raise SystemExit(1) from None


@click.command()
@click.argument("target", default=".", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--repo", type=click.Path(path_type=Path, file_okay=False), help="Repo of a saved plan."
)
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--parallelism", default=10, show_default=True, type=click.IntRange(1, 256))
@click.option("--target", "targets", multiple=True, metavar="ADDR")
@click.option("--state", "state_url", metavar="URL")
@env_option
def apply(
    target: Path,
    repo: Path | None,
    yes: bool,
    parallelism: int,
    targets: tuple[str, ...],
    state_url: str | None,
    env: tuple[str, ...],
) -> None:
    """Converge: apply an infra repo (TARGET is its folder) or a plan saved with --out."""
    saved: Plan | None = None
    if target.is_file():
        try:
            saved = from_json(target.read_text())
        except PlanFormatError as exc:
            raise click.ClickException(f"{target}: {exc}") from exc
        root = repo or Path(saved.repo_path)
    else:
        root = target
    desired = _load(root, env)
    provs = providers(desired)
    try:
        with (
            open_state(state_url, desired) as store,
            locked(store, "apply", lambda: open_state(state_url, desired)),
        ):
            for note in recover_journal(store, skyform_home(), provs):
                click.echo(f"  {note}")
            if saved is not None:
                check_fresh(saved, store, repo_commit(root))
                plan = saved
            else:
                plan = build_plan(
                    desired, store, commit=repo_commit(root), targets=targets, provs=provs
                )
            click.echo(render_text(plan, color=sys.stdout.isatty()), nl=False)
            if plan.errors:
                raise SystemExit(1)
            if not plan.summary.changes:
                return
            if saved is None:
                _confirm(yes, "apply these changes")
            world = Env(
                home=skyform_home(),
                base_dir=root.resolve(),
                providers=provs,
                env_overrides=_overrides(desired, env),
                provider_settings=provider_settings(desired),
            )
            result = run_plan(plan, desired, store, world, parallelism)
            update_ssh_config(store)  # keeps `ssh <cluster>` working
    except StalePlanError as exc:
        raise click.ClickException(str(exc)) from exc
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(result, "Apply")
    raise SystemExit(0 if result.ok else 1)


def _overrides(desired: DesiredState, env: tuple[str, ...]) -> dict[str, str]:
    """The values given for declared envs, so controllers load the tasks the plan showed."""
    given = parse_env_pairs(env)
    declared = {n for r in desired.resources.values() for t in r.source.tasks for n in t.task.envs}
    out = {n: os.environ[n] for n in declared if n in os.environ}
    out.update({k: v for k, v in given.items() if k in declared})
    return out


@click.command()
@click.argument("addresses", nargs=-1)
@click.option("--repo", "root", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--yes", "-y", is_flag=True)
@click.option("--parallelism", default=10, show_default=True, type=click.IntRange(1, 256))
@click.option("--state", "state_url", metavar="URL")
def destroy(
    addresses: tuple[str, ...], root: Path, yes: bool, parallelism: int, state_url: str | None
) -> None:
    """Tear down everything Skyform runs (or only ADDRESSES), whatever the repo declares."""
    try:
        desired: DesiredState | None = load_desired(root, {})
    except SpecError:
        desired = None  # destroy must work even when the repo no longer loads
    provs = providers(desired)
    try:
        with (
            open_state(state_url, desired) as store,
            locked(store, "destroy", lambda: open_state(state_url, desired)),
        ):
            recover_journal(store, skyform_home(), provs)
            plan = _destroy_plan(store, addresses, root)
            click.echo(render_text(plan, color=sys.stdout.isatty()), nl=False)
            if plan.errors:
                raise SystemExit(1)
            if not plan.summary.changes:
                return
            _confirm(yes, "destroy these resources")
            world = Env(home=skyform_home(), base_dir=root.resolve(), providers=provs)
            empty = DesiredState(str(root), _config(desired), {}, 0)
            result = run_plan(plan, empty, store, world, parallelism)
            update_ssh_config(store)  # keeps `ssh <cluster>` working
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(result, "Destroy")
    raise SystemExit(0 if result.ok else 1)


def _config(desired: DesiredState | None) -> RepoConfig:
    return desired.config if desired is not None else RepoConfig()


def _destroy_plan(store: Store, addresses: tuple[str, ...], root: Path) -> Plan:
    records = store.list_resources()
    known = {r.address for r in records}
    missing = [a for a in addresses if a not in known]
    if missing:
        raise click.ClickException(f"not in the state: {', '.join(missing)}")
    chosen = [r for r in records if not addresses or r.address in addresses]
    config = RepoConfig.model_validate({"policy": {"prune": True}})
    meta = store.meta()
    plan = make_plan(
        PlanInputs(
            desired=DesiredState(str(root), config, {}, 0),
            observed=observed_from(chosen),
            catalog=load_shipped_catalog([]),
            lineage=meta.lineage,
            serial=meta.serial,
        )
    )
    assert all(c.action in (Action.DELETE, Action.NOOP) for c in plan.changes)
    return plan
