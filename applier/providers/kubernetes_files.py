"""A task's workdir and local file_mounts, copied into its pods before setup: one gzipped tar of
every source (member `<i>/...` for target i), sent through exec in base64 chunks, unpacked and
copied to each destination; then `<state>/files.ready` lets the bootstrap go on to setup.

The pods need `sh`, `base64`, `tar` and `cp` (coreutils or busybox). Bucket mounts and git
workdirs are not copied (fetch them in setup).
"""

from __future__ import annotations

import base64
import io
import shlex
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from applier.provider import LaunchRequest
from schema.errors import ProviderError

CHUNK = 16 * 1024  # base64 chars per exec: the command travels in the request URL (32 KiB
# already overflowed the 64 KiB request line of the test API server; real ones allow more)
MAX_BYTES = 4 * 1024 * 1024  # compressed (~340 execs per pod); larger belongs in the image
RUNNING_TIMEOUT_S = 600.0  # for the pods to start (image pulls) before the files can go in
STATE = '"${SKYFORM_STATE_DIR:-/tmp/skyform}"'
WORKDIR = "~/sky_workdir"


@dataclass(frozen=True)
class Target:
    dest: str  # absolute, or `~/...`
    source: Path
    is_dir: bool


def wanted(req: LaunchRequest) -> bool:
    return bool(req.task.workdir or req.task.file_mounts)


def targets(req: LaunchRequest) -> list[Target]:
    """What goes where; a ProviderError names what cannot be copied and why."""
    task, out = req.task, []
    if task.workdir is not None:
        if not isinstance(task.workdir, str):
            raise ProviderError(
                f"{req.address}: a git workdir is not supported on Kubernetes yet; "
                "clone it in setup"
            )
        out.append(_target(req, WORKDIR, task.workdir, "workdir"))
    for dest, src in (task.file_mounts or {}).items():
        if not isinstance(src, str) or "://" in src:
            raise ProviderError(
                f"{req.address}: file_mounts {dest!r}: bucket mounts are not supported on "
                "Kubernetes yet; fetch the data in setup"
            )
        if not (dest.startswith("/") or dest == "~" or dest.startswith("~/")):
            dest = f"~/{dest}"  # SkyPilot: a relative destination is under the home
        if ".." in PurePosixPath(dest).parts:
            raise ProviderError(f"{req.address}: file_mounts destination {dest!r} holds '..'")
        out.append(_target(req, dest, src, f"file_mounts {dest!r}"))
    return out


def _target(req: LaunchRequest, dest: str, src: str, what: str) -> Target:
    path = Path(src).expanduser()
    path = path if path.is_absolute() else req.base_dir / path
    if not path.exists():
        raise ProviderError(f"{req.address}: {what}: source {src!r} does not exist ({path})")
    if what == "workdir" and not path.is_dir():
        raise ProviderError(f"{req.address}: workdir {src!r} is not a directory ({path})")
    return Target(dest, path, path.is_dir())


def archive(req: LaunchRequest, found: list[Target]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, t in enumerate(found):
            name = str(i) if t.is_dir else f"{i}/{PurePosixPath(t.dest).name}"
            tar.add(t.source, arcname=name, recursive=True)
    data = buf.getvalue()
    if len(data) > MAX_BYTES:
        raise ProviderError(
            f"{req.address}: workdir and file_mounts are {len(data) / 2**20:.1f} MiB compressed, "
            f"over the {MAX_BYTES // 2**20} MiB Skyform copies into pods; bake them into the "
            "image (image_id: docker:...) or fetch them in setup"
        )
    return data


def _shell_path(dest: str) -> str:
    if dest == "~":
        return '"$HOME"'
    if dest.startswith("~/"):
        return f'"$HOME"/{shlex.quote(dest[2:])}'
    return shlex.quote(dest)


def scripts(found: list[Target], data: bytes) -> list[str]:
    """The exec commands, in order: reset, append each chunk, unpack, copy, mark ready."""
    text = base64.b64encode(data).decode()
    b64 = f"{STATE}/files.b64"
    out = [f"mkdir -p {STATE} && rm -f {STATE}/files.ready && : > {b64}"]
    out += [f"printf %s {text[i : i + CHUNK]} >> {b64}" for i in range(0, len(text), CHUNK)]
    steps = [
        "set -e",
        f"rm -rf {STATE}/files && mkdir -p {STATE}/files",
        f"base64 -d {b64} | tar -xzf - -C {STATE}/files",
    ]
    for i, t in enumerate(found):
        dest = _shell_path(t.dest)
        if t.is_dir:
            steps += [f"mkdir -p {dest}", f"cp -a {STATE}/files/{i}/. {dest}/"]
        else:
            steps += [f'mkdir -p "$(dirname {dest})"', f"cp -a {STATE}/files/{i}/* {dest}"]
    steps += [f"rm -rf {STATE}/files {b64}", f"touch {STATE}/files.ready"]
    out.append("\n".join(steps))
    return out


def upload(
    req: LaunchRequest,
    found: list[Target],
    data: bytes,
    run: Callable[[str], tuple[int, str]],
    *,
    force: bool = False,
) -> None:
    """Send the files into one pod by `run` (an exec there), unless an earlier launch did (an
    adopted pod keeps the files its run is using) and not `force` (a setup about to be re-run
    gets them afresh); a failed step is a ProviderError."""
    if not force and run(f"test -e {STATE}/files.ready")[0] == 0:
        return
    for script in scripts(found, data):
        code, output = run(script)
        if code != 0:
            raise ProviderError(
                f"{req.address}: copying workdir/file_mounts into the pod failed ({code}): "
                f"{output.strip()[-500:]}"
            )
