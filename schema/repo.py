"""An infra repo: `skyform.yaml` settings plus clusters/, jobs/ and services/ task files.

Loading collects every problem in every file, then checks what spans files: duplicate
addresses, unknown `depends_on` targets and dependency cycles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schema.errors import Diagnostic, SpecError
from schema.loader import TaskFile, load_task_file
from schema.repo_config import RepoConfig, load_repo_config
from schema.task import SkyformBlock

KIND_DIRS = {"clusters": "cluster", "jobs": "job", "services": "service"}
Kind = Literal["cluster", "job", "service"]
NAME = re.compile(r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")
CONFIG_FILE = "skyform.yaml"


@dataclass(frozen=True)
class DesiredResource:
    """One declared resource: its address, kind and the file (task or pipeline) behind it."""

    address: str
    kind: Kind
    name: str
    file: str
    line: int
    source: TaskFile

    @property
    def skyform(self) -> SkyformBlock:
        if self.source.header is not None and self.source.header.skyform != SkyformBlock():
            return self.source.header.skyform
        return self.source.tasks[0].task.skyform

    @property
    def required_envs(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for t in self.source.tasks:
            seen.update(dict.fromkeys(t.task.required_envs))
        return tuple(seen)


@dataclass
class DesiredState:
    """What the repo declares, valid as a whole."""

    root: str
    config: RepoConfig
    resources: dict[str, DesiredResource]
    files: int
    warnings: list[Diagnostic] = field(default_factory=list)


def task_files(root: Path) -> list[tuple[Kind, Path]]:
    out: list[tuple[Kind, Path]] = []
    for dirname, kind in KIND_DIRS.items():
        base = root / dirname
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                out.append((kind, path))  # type: ignore[arg-type]
    return out


def load_repo(root: str | Path, env_overrides: Mapping[str, str] | None = None) -> DesiredState:
    """Load and check a whole infra repo. Raises SpecError listing every error found."""
    base = Path(root)
    diags: list[Diagnostic] = []
    if not base.is_dir():
        raise SpecError([Diagnostic(str(base), 0, 0, "not a directory", "give an infra repo path")])
    config = _config(base, diags)
    files = task_files(base)
    if not files and not (base / CONFIG_FILE).is_file():
        raise SpecError(
            [
                Diagnostic(
                    str(base),
                    0,
                    0,
                    f"not an infra repo: no {CONFIG_FILE} and no clusters/, jobs/ or services/",
                    "create skyform.yaml and put task YAML under clusters/, jobs/ or services/",
                )
            ]
        )
    diags.extend(_stray_files(base))
    resources: list[DesiredResource] = []
    for kind, path in files:
        rel = _rel(base, path)
        try:
            tf = load_task_file(path, env_overrides)
        except SpecError as exc:
            diags.extend(_relocate(d, str(path), rel) for d in exc.diagnostics)
            continue
        diags.extend(_relocate(d, str(path), rel) for d in tf.warnings)
        resource = _resource(kind, rel, tf, diags)
        if resource is not None:
            resources.append(resource)
    by_address = _unique(resources, diags)
    _check_dependencies(by_address, diags)
    for addr in config.policy.protect:
        if addr not in by_address:
            diags.append(
                Diagnostic(
                    CONFIG_FILE,
                    config.line_of("policy", "protect"),
                    0,
                    f"policy.protect names {addr}, which no file declares",
                    "fix the address or remove it",
                    severity="warning",
                )
            )
    if any(d.severity == "error" for d in diags):
        raise SpecError(diags)
    warnings = [d for d in diags if d.severity == "warning"]
    return DesiredState(str(base), config, by_address, len(files), warnings)


def _rel(base: Path, path: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _relocate(d: Diagnostic, absolute: str, rel: str) -> Diagnostic:
    if d.file != absolute:
        return d
    return Diagnostic(rel, d.line, d.col, d.message, d.hint, d.severity)


def _config(base: Path, diags: list[Diagnostic]) -> RepoConfig:
    path = base / CONFIG_FILE
    if not path.is_file():
        return RepoConfig()
    try:
        return load_repo_config(path.read_bytes(), CONFIG_FILE)
    except SpecError as exc:
        diags.extend(exc.diagnostics)
        return RepoConfig()


def _stray_files(base: Path) -> list[Diagnostic]:
    out = []
    for path in sorted(base.glob("*.y*ml")):
        if path.name not in (CONFIG_FILE, "skyform.yml"):
            out.append(
                Diagnostic(
                    path.name,
                    0,
                    0,
                    "task file outside clusters/, jobs/ and services/ is ignored",
                    "move it into the folder for its kind",
                    severity="warning",
                )
            )
    return out


def _resource(
    kind: Kind, rel: str, tf: TaskFile, diags: list[Diagnostic]
) -> DesiredResource | None:
    first = tf.tasks[0]
    name = tf.name or Path(rel).stem
    line = 1 if tf.header is not None else first.line
    problems = []
    if not NAME.match(name):
        problems.append(
            (
                f"name {name!r} cannot be used in an address",
                "use letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            )
        )
    has_service = any(t.task.service is not None for t in tf.tasks)
    if kind == "service" and not has_service:
        problems.append(
            ("a file under services/ needs a 'service:' section", "add one, or move it")
        )
    if kind != "service" and has_service:
        problems.append(
            (f"a {kind} cannot have a 'service:' section", "move the file under services/")
        )
    if kind != "job" and tf.is_pipeline:
        problems.append(
            (f"a {kind} file must hold one task; pipelines are jobs", "move it under jobs/")
        )
    for message, hint in problems:
        diags.append(Diagnostic(rel, line, 1, message, hint))
    if problems:
        return None
    return DesiredResource(f"{kind}.{name}", kind, name, rel, line, tf)


def _unique(
    resources: list[DesiredResource], diags: list[Diagnostic]
) -> dict[str, DesiredResource]:
    out: dict[str, DesiredResource] = {}
    for r in resources:
        if r.address in out:
            first = out[r.address]
            diags.append(
                Diagnostic(
                    r.file,
                    r.line,
                    1,
                    f"duplicate address {r.address}: {first.file}:{first.line} declares it too",
                    "give one of them another 'name:' (or rename the file)",
                )
            )
            continue
        out[r.address] = r
    return out


def _check_dependencies(resources: dict[str, DesiredResource], diags: list[Diagnostic]) -> None:
    for r in resources.values():
        for dep in r.skyform.depends_on:
            if dep not in resources:
                known = ", ".join(sorted(resources)) or "none"
                diags.append(
                    Diagnostic(
                        r.file,
                        r.line,
                        1,
                        f"{r.address} depends on {dep}, which no file in the repo declares",
                        f"declared addresses: {known}",
                    )
                )
    for cycle in _cycles(resources):
        where = ", ".join(f"{resources[a].file}:{resources[a].line}" for a in cycle)
        first = resources[cycle[0]]
        diags.append(
            Diagnostic(
                first.file,
                first.line,
                1,
                f"dependency cycle: {' -> '.join([*cycle, cycle[0]])} ({where})",
                "remove one depends_on entry to break the cycle",
            )
        )


def _cycles(resources: dict[str, DesiredResource]) -> list[list[str]]:
    """Each cycle once, found by depth-first search (white/grey/black colouring)."""
    colour: dict[str, int] = dict.fromkeys(resources, 0)
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(node: str, stack: list[str]) -> None:
        colour[node] = 1
        stack.append(node)
        for dep in resources[node].skyform.depends_on:
            if dep not in resources:
                continue
            if colour[dep] == 1:
                cycle = stack[stack.index(dep) :]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif colour[dep] == 0:
                visit(dep, stack)
        stack.pop()
        colour[node] = 2

    for address in sorted(resources):
        if colour[address] == 0:
            visit(address, [])
    return found
