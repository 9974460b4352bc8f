"""Commands and logs of Kubernetes pods: `run` through the exec subresource (WebSocket), and
container logs copied into files under the Skyform home (what `log_paths` returns).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes.stream import stream

from applier.provider import LogFile
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes_api import Api, status_code
from schema.errors import ProviderError, TransientError

EXEC_TIMEOUT_S = 3600.0  # a `run` command longer than this is cut off and reported


def log_dir(home: Path, context: str, resource_id: str) -> Path:
    """`<home>/kubernetes/<context>/<namespace>/<resource>`; contexts may hold '/' or ':'."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", context)
    return home / "kubernetes" / safe / resource_id


def run_command(command: str) -> str:
    """`command` as SkyPilot runs it: by bash where the image has it, else sh."""
    return (
        "if command -v bash >/dev/null 2>&1; then exec bash -c "
        f"{shlex.quote(command)}; else exec sh -c {shlex.quote(command)}; fi"
    )


def script(env: Mapping[str, str], then: str) -> str:
    """The variables of `env`, the work directory (as runs get it), then `then`."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    return f'{exports}[ -d "$HOME/sky_workdir" ] && cd "$HOME/sky_workdir"\n{then}\n'


def exec_in_pod(
    api: Api, namespace: str, pod: str, command: str, env: Mapping[str, str] | None
) -> tuple[int, str]:
    """Run `command` with SkyPilot's shell conventions in the pod's container; (exit, output)."""
    try:
        ws = open_exec(api, namespace, pod, script(env or {}, run_command(command)))
    except TransientError as exc:
        if "Handshake status 4" in str(exc):  # the API server refused: not a network blip
            raise ProviderError(f"exec in pod {pod}: {exc}") from exc
        raise
    try:
        ws.run_forever(timeout=EXEC_TIMEOUT_S)
        output = str(ws.read_stdout() or "") + str(ws.read_stderr() or "")
        code = ws.returncode
    except (OSError, ValueError, TypeError) as exc:
        raise TransientError(f"exec in pod {pod}: the stream broke ({exc})", 5.0) from exc
    finally:
        ws.close()
    if code is None:
        raise ProviderError(f"exec in pod {pod}: still running after {EXEC_TIMEOUT_S:g}s")
    return int(code), output


def open_exec(
    api: Api,
    namespace: str,
    pod: str,
    script: str,
    *,
    stdin: bool = False,
    tty: bool = False,
    binary: bool = False,
) -> Any:
    """An exec stream (`kubernetes.stream.ws_client.WSClient`) of `/bin/sh -c script` in the
    pod's container."""
    return api.call(
        f"exec in pod {pod}",
        stream,
        api.core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container=pods.CONTAINER,
        command=["/bin/sh", "-c", script],
        stdout=True,
        stderr=True,
        stdin=stdin,
        tty=tty,
        binary=binary,
        _preload_content=False,
    )


def mark_active(api: Api, namespace: str, names: Sequence[str]) -> None:
    """Record use of the pods now (`pods.ACTIVITY`), which autostop counts."""
    patch = pods.activity_patch(time.time())
    for name in names:
        api.call(f"annotate pod {name}", api.core.patch_namespaced_pod, name, namespace, patch)


def fetch_logs(api: Api, namespace: str, prefix: str, num_nodes: int, base: Path) -> None:
    """Copy each pod's container log to `node-<rank>/run.log`; a pod already gone keeps the
    last copy (setup and run share one container, so one file holds both)."""
    for rank in range(num_nodes):
        name = pods.pod_name(prefix, rank)
        try:
            text = api.call(
                f"read log of pod {name}",
                api.core.read_namespaced_pod_log,
                name,
                namespace,
                container=pods.CONTAINER,
            )
        except ProviderError as exc:
            if status_code(exc) in (400, 404):  # gone, or not started yet
                continue
            raise
        target = base / f"node-{rank}" / "run.log"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(str(text or ""))


def append_exec_log(base: Path, rank: int, command: str, output: str) -> None:
    append_stage_log(base, rank, "exec", command, output)


def append_stage_log(base: Path, rank: int, stage: str, command: str, output: str) -> None:
    """`$ command` and its output at the end of `node-<rank>/<stage>.log` (`exec`: runs;
    `setup`: a setup re-run through exec, the first one being in the container's log)."""
    target = base / f"node-{rank}" / f"{stage}.log"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as fh:
        fh.write(f"$ {command}\n{output}")


def local_logs(base: Path, num_nodes: int) -> list[LogFile]:
    out = []
    for rank in range(num_nodes):
        for stage in ("setup", "run", "exec"):
            path = base / f"node-{rank}" / f"{stage}.log"
            if path.exists():
                out.append(LogFile(rank, stage, path))
    return out
