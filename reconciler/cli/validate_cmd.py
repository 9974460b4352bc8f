"""`skyform validate`."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    group.add_command(validate)


@click.command()
def validate() -> None:
    """Validate an infra repo or task YAML files."""
    raise SystemExit(0)
