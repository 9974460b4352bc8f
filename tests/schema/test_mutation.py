"""Property: whatever a corpus file is mutated into, loading raises only SpecError, with a place."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schema.errors import SpecError
from schema.loader import load_tasks
from tests.conftest import CORPUS

FILES = sorted(CORPUS.glob("*.yaml")) if CORPUS.is_dir() else []
pytestmark = pytest.mark.skipif(not FILES, reason="shared corpus not present")

JUNK = ["\t", ":", "- ", "{", "}", "[", "]", "&a ", "*a", "!!python/object ", "'", '"', "#",
        "---\n", "...\n", "%YAML 1.1\n", "\x00", "\ufeff", "?", "|", ">", "@", "`", "~",
        "accelerators: ", "num_nodes: -3", "A100:0", "8000-7000", "any_of:\n  - ",
        "resources:\n  ", "  ", "\n", "null", "true", "1e999", "-.inf"]  # fmt: skip


def _check(text: str, name: str) -> None:
    try:
        load_tasks(text, name)
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.file == name
            assert d.line >= 1, d.format()
            assert d.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=max(len(FILES) - 1, 0)),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "replace", "swap"]),
            st.sampled_from(JUNK),
            st.integers(1, 40),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_corpus_raises_only_spec_error(
    index: int, edits: list[tuple[float, str, str, int]]
) -> None:
    path: Path = FILES[index]
    text = path.read_text()
    for where, op, junk, span in edits:
        at = int(where * len(text))
        if op == "insert":
            text = text[:at] + junk + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + span :]
        elif op == "replace":
            text = text[:at] + junk + text[at + len(junk) :]
        else:
            lines = text.splitlines(keepends=True)
            if len(lines) > 1:
                i = at % (len(lines) - 1)
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
                text = "".join(lines)
    _check(text, path.name)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_spec_error(text: str) -> None:
    _check(text, "random.yaml")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "resources",
                        "accelerators",
                        "any_of",
                        "ordered",
                        "service",
                        "replica_policy",
                        "readiness_probe",
                        "cpus",
                        "ports",
                        "envs",
                        "num_nodes",
                        "infra",
                        "job_recovery",
                        "autostop",
                        "file_mounts",
                        "skyform",
                        "depends_on",
                        "labels",
                        "x",
                    ]
                ),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
@example({"skyform": {"resources": None, "depends_on": True}})  # found by this test in CI
@example({"skyform": {"depends_on": {"x": 1}}})
def test_arbitrary_structures_raise_only_spec_error(data: object) -> None:
    import json

    _check(json.dumps(data), "structured.yaml")
