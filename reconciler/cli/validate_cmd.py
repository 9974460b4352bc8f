"""`skyform validate`: every problem in an infra repo or task files, at once, with file:line:col."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click

from reconciler.cli.common import env_option, parse_env_pairs
from schema.errors import Diagnostic, SpecError
from schema.loader import load_task_file
from schema.repo import load_repo, task_files


def register(group: click.Group) -> None:
    group.add_command(validate)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for tools, github for CI annotations.",
)
@env_option
def validate(paths: tuple[Path, ...], fmt: str, env: tuple[str, ...]) -> None:
    """Check an infra repo (default: .) or task YAML files. Exit 0 if valid, 1 if not."""
    overrides = parse_env_pairs(env)
    diags: list[Diagnostic] = []
    files = 0
    kinds: Counter[str] = Counter()
    for path in paths or (Path("."),):
        if path.is_dir():
            try:
                state = load_repo(path, overrides)
            except SpecError as exc:
                diags.extend(_prefixed(d, path) for d in exc.diagnostics)
                files += _count_files(path)
                continue
            files += state.files
            kinds.update(r.kind for r in state.resources.values())
            diags.extend(_prefixed(d, path) for d in state.warnings)
        else:
            files += 1
            try:
                diags.extend(load_task_file(path, overrides).warnings)
            except SpecError as exc:
                diags.extend(exc.diagnostics)
    errors = [d for d in diags if d.severity == "error"]
    warnings = [d for d in diags if d.severity == "warning"]
    if fmt == "json":
        doc = {
            "valid": not errors,
            "files": files,
            "errors": [d.as_dict() for d in errors],
            "warnings": [d.as_dict() for d in warnings],
        }
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "github":
        for d in diags:
            click.echo(_github(d))
    else:
        for d in diags:
            click.echo(d.format(), err=d.severity == "error")
        click.echo(_summary(files, kinds, len(errors), len(warnings)))
    raise SystemExit(1 if errors else 0)


def _prefixed(d: Diagnostic, root: Path) -> Diagnostic:
    """Repo-relative file names become relative to where the user ran the command."""
    if os.path.isabs(d.file) or str(root) in (".", ""):
        return d
    return Diagnostic(str(root / d.file), d.line, d.col, d.message, d.hint, d.severity)


def _count_files(root: Path) -> int:
    return len(task_files(root)) + int((root / "skyform.yaml").is_file())


def _summary(files: int, kinds: Counter[str], errors: int, warnings: int) -> str:
    what = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(kinds.items()))
    checked = f"{files} file{'s' if files != 1 else ''} checked" + (f" ({what})" if what else "")
    if errors:
        return f"invalid: {checked}: {errors} error(s), {warnings} warning(s)"
    return f"valid: {checked}" + (f", {warnings} warning(s)" if warnings else "")


def _escape(text: str, *, prop: bool = False) -> str:
    # GitHub workflow-command escaping: data escapes %, CR, LF; properties also ':' and ','.
    out = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        out = out.replace(":", "%3A").replace(",", "%2C")
    return out


def _github(d: Diagnostic) -> str:
    props = [f"file={_escape(d.file, prop=True)}"]
    if d.line:
        props.append(f"line={d.line}")
    if d.col:
        props.append(f"col={d.col}")
    message = d.message + (f" (hint: {d.hint})" if d.hint else "")
    return f"::{d.severity} {','.join(props)}::{_escape(message)}"
