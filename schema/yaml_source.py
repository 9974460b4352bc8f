"""YAML text to plain Python data plus a map of where every node stands (file:line:col).

Parsing follows SkyPilot's reading of YAML (PyYAML, YAML 1.1: `yes` is true, `012` is octal),
through ruamel.yaml's round-trip loader so that each key and value keeps its line and column.
Hostile input (huge files, alias bombs, deep nesting, bad encodings) ends in a SpecError with a
location, in bounded time and memory.
"""

from __future__ import annotations

import datetime
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from schema.errors import Diagnostic, SpecError

# SkyPilot task files are a few KB; 4 MiB leaves room for generated ones and stops a stray
# dataset or log committed as .yaml from being parsed into memory.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Every node visited while flattening, aliases counted each time they are used: a
# billion-laughs document is refused long before it costs real memory.
MAX_NODES = 200_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]


@dataclass
class Positions:
    """1-based (line, col) of each value and each mapping key, by path from the document root."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, prefer_key: bool = False) -> tuple[int, int]:
        """The position of `path`, or of its deepest ancestor that has one."""
        p = tuple(path)
        while True:
            if prefer_key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if p in self.keys:
                return self.keys[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def has(self, path: Path) -> bool:
        return tuple(path) in self.values


@dataclass
class Document:
    """One YAML document: plain data (dict/list/str/int/float/bool/None) and its positions."""

    data: Any
    positions: Positions
    file: str
    index: int  # 0-based document number within the file


def _diag(file: str, line: int, col: int, message: str, hint: str = "") -> SpecError:
    return SpecError([Diagnostic(file, line, col, message, hint)])


def decode(raw: bytes, file: str) -> str:
    """UTF-8 (with or without BOM) to text; anything else is an error at the first bad byte."""
    if len(raw) > MAX_FILE_BYTES:
        raise _diag(
            file,
            1,
            1,
            f"file is {len(raw):,} bytes; task files are limited to {MAX_FILE_BYTES:,} bytes",
            "keep data out of task YAML: put it in a bucket or a file_mounts source",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise _diag(
            file,
            line,
            col,
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8",
        ) from None


def parse_documents(text: str, file: str) -> list[Document]:
    """Parse every YAML document in `text`. Raises SpecError with a location on any failure."""
    if len(text) > MAX_FILE_BYTES:
        raise _diag(
            file,
            1,
            1,
            f"file is {len(text):,} characters; task files are limited to {MAX_FILE_BYTES:,}",
            "keep data out of task YAML: put it in a bucket or a file_mounts source",
        )
    yaml = YAML(typ="rt")
    yaml.version = (1, 1)  # PyYAML's reading, as SkyPilot's loader uses it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nodes = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except YAMLError as exc:
        raise _diag(file, 1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _diag(
            file,
            1,
            1,
            "YAML is nested too deeply to read",
            f"task files need far less than {MAX_DEPTH} levels of nesting",
        ) from None
    docs = []
    budget = _Budget(file)
    for index, node in enumerate(nodes):
        positions = Positions()
        data = _flatten(node, (), positions, budget, 0)
        docs.append(Document(data, positions, file, index))
    return docs


def _yaml_error(exc: MarkedYAMLError, file: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    col = mark.column + 1 if mark is not None else 1
    problem = exc.problem or "invalid YAML"
    hint = ""
    if "'\\t'" in problem or "\t" in problem:
        problem = "a tab character is not allowed here (YAML indents with spaces only)"
        hint = "replace the tab with spaces"
    elif "duplicate key" in problem:
        # ruamel's wording quotes both values, which may be secrets: name only the key.
        key = re.search(r'duplicate key "([^"]*)"', problem)
        first = f" (first at line {exc.context_mark.line + 1})" if exc.context_mark else ""
        problem = f"duplicate key {key.group(1) if key else ''!r}{first}"
        hint = "each key may appear once in a mapping; remove or rename one of them"
    elif exc.context:
        started = ""
        if exc.context_mark is not None:
            started = f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        problem = f"{problem} ({exc.context}{started})"
    if "mapping values are not allowed here" in problem:
        hint = "quote the value, or put a space after ':' only where a key ends"
    return _diag(file, line, col, f"invalid YAML: {problem}", hint)


class _Budget:
    def __init__(self, file: str) -> None:
        self.file = file
        self.left = MAX_NODES

    def spend(self, line: int, col: int) -> None:
        self.left -= 1
        if self.left < 0:
            raise _diag(
                self.file,
                line,
                col,
                f"document expands to more than {MAX_NODES:,} nodes (aliases counted each use)",
                "this looks like an alias bomb; write the values out instead of nesting aliases",
            )


def _flatten(node: Any, path: Path, pos: Positions, budget: _Budget, depth: int) -> Any:
    if depth > MAX_DEPTH:
        line, col = pos.locate(path)
        raise _diag(
            budget.file,
            line,
            col,
            f"YAML is nested more than {MAX_DEPTH} levels deep",
            "task files need only a few levels of nesting",
        )
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key in node:
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            budget.spend(kline + 1, kcol + 1)
            plain_key = _scalar(key)
            if isinstance(plain_key, dict | list):
                raise _diag(budget.file, kline + 1, kcol + 1, "a mapping key must be a scalar")
            child = (*path, str(plain_key) if not isinstance(plain_key, int) else plain_key)
            pos.keys[child] = (kline + 1, kcol + 1)
            pos.values[child] = (vline + 1, vcol + 1)
            out[plain_key] = _flatten(node[key], child, pos, budget, depth + 1)
        if path not in pos.values:
            pos.values[path] = (node.lc.line + 1, node.lc.col + 1)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            budget.spend(line + 1, col + 1)
            pos.values[(*path, i)] = (line + 1, col + 1)
            items.append(_flatten(item, (*path, i), pos, budget, depth + 1))
        if path not in pos.values:
            pos.values[path] = (node.lc.line + 1, node.lc.col + 1)
        return items
    return _scalar(node)


def _scalar(value: Any) -> Any:
    """ruamel's round-trip scalar types to the plain types PyYAML would give."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, ScalarBoolean):  # an anchored boolean
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value
    if hasattr(value, "value") and isinstance(value.value, str):  # TaggedScalar
        return str(value.value)
    return value
