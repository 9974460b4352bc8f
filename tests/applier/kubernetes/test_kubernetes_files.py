"""A task's workdir and local file_mounts reach every pod before setup: copied through the
exec subresource (the fake's exec runs each command with /bin/sh on this machine, in a home
and state directory per pod), then the real bootstrap runs setup over them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from applier.provider import LaunchRequest
from applier.providers.kubernetes_pods import BOOTSTRAP
from schema.errors import ProviderError
from tests.k8s_server.harness import Kube, env_of, request


def _sources(tmp_path: Path) -> tuple[Path, bytes]:
    repo = tmp_path / "repo"
    (repo / "app" / "sub").mkdir(parents=True)
    (repo / "app" / "train.py").write_text("print('train')\n")
    (repo / "app" / "sub" / "x.txt").write_text("x\n")
    (repo / "cfg").mkdir()
    (repo / "cfg" / "a.yaml").write_text("a: 1\n")
    blob = os.urandom(100_000)  # incompressible: several exec chunks
    (repo / "data.bin").write_bytes(blob)
    return repo, blob


def _request(repo: Path, abs_dest: Path, num_nodes: int = 2) -> LaunchRequest:
    yaml = (
        "workdir: app\n"
        f"file_mounts:\n  ~/data/data.bin: data.bin\n  {abs_dest}: cfg\n"
        "setup: cat train.py sub/x.txt\n"
        "run: x\n"
    )
    req = request(yaml, "ctx-b", num_nodes=num_nodes)
    return dataclasses.replace(req, base_dir=repo)


def _pod_shell(kube: Kube, tmp_path: Path) -> list[list[str]]:
    """Exec in the fake ctx-b runs for real, in <tmp>/pods/<pod>/{home,state}."""
    seen: list[list[str]] = []

    def handler(pod: dict[str, object], command: list[str]) -> tuple[int, str]:
        seen.append(command)
        root = tmp_path / "pods" / str(pod["metadata"]["name"])  # type: ignore[index]
        (root / "home").mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root / "home"),
            "SKYFORM_STATE_DIR": str(root / "state"),
        }
        out = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=30, check=False
        )
        return out.returncode, out.stdout + out.stderr

    kube.b.cluster.exec_handler = handler
    return seen


def test_the_workdir_and_file_mounts_are_in_every_pod_before_setup(
    kube: Kube, tmp_path: Path
) -> None:
    repo, blob = _sources(tmp_path)
    seen = _pod_shell(kube, tmp_path)
    abs_dest = tmp_path / "abs" / "cfg"
    provider = kube.provider()
    req = _request(repo, abs_dest)
    handle = provider.launch(req)

    prefix = handle.resource_id.partition("/")[2]
    for rank in range(2):
        root = tmp_path / "pods" / f"{prefix}-{rank}"
        home = root / "home"
        assert (home / "sky_workdir" / "train.py").read_text() == "print('train')\n"
        assert (home / "sky_workdir" / "sub" / "x.txt").read_text() == "x\n"
        assert (home / "data" / "data.bin").read_bytes() == blob
        assert (root / "state" / "files.ready").exists()
        assert sorted(p.name for p in (root / "state").iterdir()) == ["files.ready"]
    assert (abs_dest / "a.yaml").read_text() == "a: 1\n"

    [pod, _] = sorted(kube.pods("ctx-b"), key=lambda p: p["metadata"]["name"])
    env = env_of(pod)
    assert env["SKYFORM_FILES"] == "1"
    root = tmp_path / "pods" / f"{prefix}-0"
    boot = subprocess.run(
        ["/bin/sh", "-c", BOOTSTRAP],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(root / "home"),
            "SKYFORM_STATE_DIR": str(root / "state"),
            "SKYFORM_FILES": "1",
            "SKYFORM_SETUP": env["SKYFORM_SETUP"],
        },
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr
    assert boot.stdout == "print('train')\nx\n"  # setup ran in the copied workdir

    execs = len(seen)
    assert execs > 2 * 4  # a check, a reset, several chunks and the unpack per pod
    provider.launch(req)  # adopting: the files are in already, only checked
    assert len(seen) == execs + 2


def test_the_bootstrap_gives_up_when_the_files_never_arrive(tmp_path: Path) -> None:
    out = subprocess.run(
        ["/bin/sh", "-c", BOOTSTRAP],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "SKYFORM_STATE_DIR": str(tmp_path / "state"),
            "SKYFORM_FILES": "1",
            "SKYFORM_FILES_WAIT": "0",
            "SKYFORM_SETUP": "echo never",
        },
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "never arrived" in out.stderr and "never" not in out.stdout


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("file_mounts:\n  /data: s3://bucket/x\nrun: x\n", "bucket mounts are not supported"),
        ("workdir: nowhere\nrun: x\n", "does not exist"),
        ("file_mounts:\n  /d: data.bin\nworkdir: data.bin\nrun: x\n", "is not a directory"),
    ],
)
def test_what_cannot_be_copied_is_an_error_before_anything_is_created(
    kube: Kube, tmp_path: Path, yaml: str, expected: str
) -> None:
    repo, _ = _sources(tmp_path)
    req = dataclasses.replace(request(yaml, "ctx-b"), base_dir=repo)
    with pytest.raises(ProviderError, match=expected):
        kube.provider().launch(req)
    assert kube.pods("ctx-b") == []
