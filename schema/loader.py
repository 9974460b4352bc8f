"""Task YAML text + file name -> validated models, with every problem reported at file:line:col.

All problems in a file are collected before raising, so a user fixes them in one pass.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from schema.errors import Diagnostic, SpecError
from schema.task import PIPELINE_HEADER_KEYS, PipelineHeader, Task
from schema.values import nearest
from schema.yaml_source import Document, Positions, decode, parse_documents

# Keys SkyPilot renamed; a plain "nearest key" guess could point elsewhere.
RENAMED_KEYS = {
    "spot_recovery": "job_recovery",
    "gpu": "accelerators",
    "accelerator": "accelerators",
}
TASK_KEYS = ("resources", "run", "setup", "service", "num_nodes", "file_mounts")


@dataclass(frozen=True)
class LoadedTask:
    """A task with where it came from."""

    task: Task
    file: str
    line: int
    doc_index: int


@dataclass
class TaskFile:
    """Everything one file declares: one task, or a pipeline / job group of several."""

    file: str
    tasks: list[LoadedTask]
    header: PipelineHeader | None = None
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def is_pipeline(self) -> bool:
        return self.header is not None or len(self.tasks) > 1

    @property
    def name(self) -> str | None:
        if self.header is not None and self.header.name:
            return self.header.name
        return self.tasks[0].task.name if len(self.tasks) == 1 else None


def load_task_file(path: str | Path, env_overrides: Mapping[str, str] | None = None) -> TaskFile:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError([Diagnostic(str(p), 0, 0, f"cannot read file: {exc.strerror}")]) from None
    return load_tasks(decode(raw, str(p)), str(p), env_overrides)


def load_tasks(text: str, file: str, env_overrides: Mapping[str, str] | None = None) -> TaskFile:
    """Parse and validate every document of a task file. Raises SpecError listing every error."""
    docs = [d for d in parse_documents(text, file) if d.data is not None]
    if not docs:
        raise SpecError(
            [
                Diagnostic(
                    file,
                    1,
                    1,
                    "file is empty: it declares no task",
                    "add at least a 'run:' command, or delete the file",
                )
            ]
        )
    diags: list[Diagnostic] = []
    header: PipelineHeader | None = None
    if len(docs) > 1 and _is_header(docs[0].data):
        header = validate_document(PipelineHeader, docs[0], diags)
        docs = docs[1:]
    tasks: list[LoadedTask] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            line, col = doc.positions.locate(())
            diags.append(
                Diagnostic(
                    file,
                    line,
                    col,
                    f"a task must be a mapping of keys (run, resources, ...), "
                    f"got {_kind(doc.data)}",
                    "start the document with keys such as 'resources:' and 'run:'",
                )
            )
            continue
        data = _substitute_envs(doc.data, env_overrides)
        task = validate_document(Task, Document(data, doc.positions, file, doc.index), diags)
        if task is not None:
            line, _ = doc.positions.locate(())
            tasks.append(LoadedTask(task, file, line, doc.index))
            diags.extend(_required_env_warnings(task, doc))
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise SpecError(diags)
    return TaskFile(file, tasks, header, [d for d in diags if d.severity == "warning"])


def _is_header(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and set(data) <= PIPELINE_HEADER_KEYS


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", dict: "a mapping", bool: "a boolean", int: "a number"}
    return names.get(type(value), type(value).__name__)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_SUBSTITUTED = ("file_mounts", "service", "workdir", "volumes")


def _substitute_envs(data: dict[str, Any], overrides: Mapping[str, str] | None) -> dict[str, Any]:
    """Fill `${VAR}`/`$VAR` from envs into file_mounts, service, workdir and volumes, as SkyPilot
    does (run and setup see them as environment variables instead). Unknown names stay as typed.
    """
    envs = data.get("envs")
    values: dict[str, str] = {}
    if isinstance(envs, dict):
        values = {str(k): str(v) for k, v in envs.items() if v is not None}
    if overrides and isinstance(envs, dict):
        # Only envs the task declares are filled: one --env for a repo of tasks must not
        # leak a value (often a token) into every task.
        declared = {str(k): v for k, v in overrides.items() if k in envs}
        values.update(declared)
        data = {**data, "envs": {**envs, **declared}}
    secrets = data.get("secrets")
    if isinstance(secrets, dict):
        values.update({str(k): str(v) for k, v in secrets.items() if v is not None})
    if not values:
        return data

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            return _ENV_REF.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), node)
        if isinstance(node, dict):
            return {fill(k) if isinstance(k, str) else k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    return {k: fill(v) if k in _SUBSTITUTED else v for k, v in data.items()}


def _required_env_warnings(task: Task, doc: Document) -> list[Diagnostic]:
    out = []
    for name in task.required_envs:
        line, col = doc.positions.locate(("envs", name), prefer_key=True)
        out.append(
            Diagnostic(
                doc.file,
                line,
                col,
                f"env {name} has no value: it is a required input",
                f"plan needs it: pass --env {name}=VALUE or set {name} in the environment",
                severity="warning",
            )
        )
    return out


M = typing.TypeVar("M", bound=BaseModel)


def validate_document(model: type[M], doc: Document, diags: list[Diagnostic]) -> M | None:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        diags.extend(_translate(exc, model, doc))
        return None


_EXPECTED = {
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true/false",
    "none_required": "null",
}
_TYPE_ERRORS = (
    "string_type",
    "dict_type",
    "list_type",
    "model_type",
    "model_attributes_type",
    "int_type",
    "float_type",
    "bool_type",
    "none_required",
    "tuple_type",
)


def _translate(exc: ValidationError, model: type[BaseModel], doc: Document) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    errors = exc.errors(include_url=False)
    by_path: dict[tuple[str | int, ...], list[str]] = {}
    for err in errors:
        by_path.setdefault(_data_path(err["loc"], doc.positions), []).append(err["type"])
    for err in errors:
        kinds = by_path[_data_path(err["loc"], doc.positions)]
        if err["type"] in _TYPE_ERRORS and any(k not in _TYPE_ERRORS for k in kinds):
            continue  # a union member that did not apply; the other member's error says more
        if err["type"] in _TYPE_ERRORS and len(kinds) > 1:
            if err["type"] != kinds[0]:
                continue
            expected = " or ".join(sorted({_EXPECTED.get(k, k) for k in kinds}))
            err = {**err, "msg": f"expected {expected}"}
        path = _data_path(err["loc"], doc.positions)
        kind = err["type"]
        if kind == "extra_forbidden":
            out.append(_unknown_key(path, model, doc))
            continue
        line, col = doc.positions.locate(path)
        where = _describe(path)
        msg = str(err["msg"])
        msg = msg.removeprefix("Value error, ")
        hint = ""
        ctx = err.get("ctx") or {}
        bound = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("greater than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }
        if kind in bound:
            words, key = bound[kind]
            msg = f"must be {words} {ctx.get(key)}, got {err.get('input')!r}"
        elif kind == "bool_parsing":
            msg = f"must be true or false, got {err.get('input')!r}"
        if kind == "missing":
            msg = f"missing required key {path[-1]!r}"
            line, col = doc.positions.locate(path[:-1])
        elif kind == "bool_type":
            hint = "write true or false"
        elif kind.startswith(("int_", "float_")):
            hint = "write a number"
        elif kind in (
            "string_type",
            "dict_type",
            "list_type",
            "model_type",
            "model_attributes_type",
        ):
            msg = f"{msg}, got {_kind(err.get('input'))}"
        if path and isinstance(path[-1], str) and msg.startswith(f"{path[-1]} "):
            msg = msg[len(path[-1]) + 1 :]  # "disk_tier must be ..." under resources.disk_tier
        sep = " " if msg.startswith(("must be", "name ", "count ")) else ": "
        out.append(Diagnostic(doc.file, line, col, f"{where}{sep}{msg}" if where else msg, hint))
    # One problem can surface once per union member; a person needs it once.
    unique: dict[tuple[int, int, str], Diagnostic] = {}
    for d in out:
        unique.setdefault((d.line, d.col, d.message), d)
    return sorted(unique.values(), key=lambda d: (d.line, d.col))


def _data_path(loc: tuple[int | str, ...], positions: Positions) -> tuple[str | int, ...]:
    """pydantic's error location minus union/validator tags, as a path into the YAML data."""
    path: list[str | int] = []
    for part in loc:
        candidate = (*path, part)
        known = positions.has(candidate) or candidate in positions.keys
        if known or isinstance(part, int) or not _is_tag(part):
            path.append(part)
    return tuple(path)


def _is_tag(part: str) -> bool:
    return (
        "[" in part
        or part in ("str", "int", "float", "bool", "list", "dict", "tuple", "none")
        or part.startswith(("function-", "lax-", "json-", "tagged-"))
        or part[:1].isupper()
    )


def _describe(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(path: tuple[str | int, ...], model: type[BaseModel], doc: Document) -> Diagnostic:
    key = str(path[-1])
    parent = path[:-1]
    owner = _model_at(model, parent)
    allowed = _keys_of(owner) if owner is not None else []
    line, col = doc.positions.locate(path, prefer_key=True)
    where = f" in {_describe(parent)}" if parent else ""
    guess = RENAMED_KEYS.get(key) if RENAMED_KEYS.get(key) in allowed else nearest(key, allowed)
    if guess:
        hint = f"did you mean {guess!r}?"
    elif allowed:
        hint = f"allowed keys: {', '.join(sorted(k for k in allowed if not k.startswith('_')))}"
    else:
        hint = "remove it"
    return Diagnostic(doc.file, line, col, f"unknown key {key!r}{where}", hint)


_LEGACY_KEYS = {"Resources": ("cloud", "region", "zone", "gpus", "ephemeral_storage")}


def _keys_of(model: type[BaseModel]) -> list[str]:
    keys = [f.alias or name for name, f in model.model_fields.items()]
    return keys + list(_LEGACY_KEYS.get(model.__name__, ()))


def _model_at(root: type[BaseModel], path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (None when it is not a model)."""
    current: Any = root
    for part in path:
        if isinstance(part, int):
            continue  # a list item: its type was resolved with the list
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or n: f for n, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        else:
            current = _container_item(current)
        current = _first_model(current) or current
    return _first_model(current)


def _container_item(tp: Any) -> Any:
    args = typing.get_args(tp)
    for arg in args:
        inner = _first_model(arg)
        if inner is not None:
            return inner
        if typing.get_origin(arg) in (dict, list, tuple):
            return _container_item(arg)
    return args[-1] if args else None


def _first_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(tp):
            found = _first_model(arg)
            if found is not None:
                return found
    if origin in (tuple, list):
        for arg in typing.get_args(tp):
            found = _first_model(arg)
            if found is not None:
                return found
    return None
