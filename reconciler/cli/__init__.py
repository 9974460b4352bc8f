"""The `skyform` command line: one click group; each command family lives in its own module."""

from __future__ import annotations

import click

from reconciler.cli import (
    apply_cmd,
    catalog_cmd,
    check_cmd,
    plan_cmd,
    reconcile_cmd,
    ssh_cmd,
    state_cmd,
    status_cmd,
    validate_cmd,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="skyform")
def main() -> None:
    """Skyform: declarative GitOps for AI compute (SkyPilot-compatible task YAML)."""


# Each command family registers itself here, one line each.
validate_cmd.register(main)
state_cmd.register(main)
catalog_cmd.register(main)
plan_cmd.register(main)
apply_cmd.register(main)
status_cmd.register(main)
reconcile_cmd.register(main)
ssh_cmd.register(main)
check_cmd.register(main)
