"""`skyform check`: which infra of the search space is usable from here, and for each one that is
not, why and how to fix it (like `sky check`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from applier.providers import registry
from reconciler.context import provider_settings, search_clouds
from schema.errors import SpecError
from schema.repo import DesiredState
from schema.repo_config import load_repo_config

DEFAULT_CLOUDS = ("local", "kubernetes", "aws", "gcp")


def register(group: click.Group) -> None:
    group.add_command(check)


@click.command()
@click.argument("repo", required=False, type=click.Path(path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: infra -> reason or null.")
def check(repo: Path, as_json: bool) -> None:
    """Say which infra is usable: local, kubernetes, aws, gcp and the repo's search space.
    Exit 0 when at least one is usable."""
    desired = _config(repo)
    clouds = list(dict.fromkeys([*DEFAULT_CLOUDS, *search_clouds(desired)]))
    settings = provider_settings(desired)
    reasons = {cloud: registry.check(cloud, settings) for cloud in clouds}
    if as_json:
        click.echo(json.dumps(reasons, indent=2))
    else:
        for cloud, reason in reasons.items():
            if reason is None:
                click.echo(f"  {cloud}: enabled")
            else:
                click.echo(f"  {cloud}: disabled\n    reason: {reason}")
        usable = [c for c, r in reasons.items() if r is None]
        click.echo(f"\n{len(usable)} of {len(reasons)} infra usable: {', '.join(usable) or 'none'}")
    raise SystemExit(0 if any(r is None for r in reasons.values()) else 1)


def _config(repo: Path) -> DesiredState | None:
    """Only the repo's settings (skyform.yaml): a broken task file must not hide the infra."""
    path = repo / "skyform.yaml"
    if not path.is_file():
        return None
    try:
        config = load_repo_config(path.read_bytes(), str(path))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    return DesiredState(root=str(repo), config=config, resources={}, files=0)
