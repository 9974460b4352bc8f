"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from schema.task import ENV_NAME

F = TypeVar("F", bound=Callable[..., object])


def env_option(fn: F) -> F:
    return click.option(
        "--env",
        "env",
        multiple=True,
        metavar="NAME=VALUE",
        help="Set a task env (repeatable); fills envs declared without a value.",
    )(fn)


def parse_env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE (NAME: letters, digits, _)", param_hint="--env"
            )
        out[name] = value
    return out
