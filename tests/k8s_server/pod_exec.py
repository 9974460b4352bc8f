"""Execs that really run: `processes_in(root)` is an `ExecRunner` for `FakeCluster.exec_runner`
that starts an exec's command as a process on this machine, as if in the pod's container: with
the container's environment (SkyPilot's variables), a HOME of the pod's own
(`<root>/<pod>/home`, holding a `sky_workdir`), a TMPDIR of its own (`<root>/<pod>/tmp`) and
a Skyform state directory of its own (`<root>/<pod>/state`, else /tmp/skyform as in a
container), so pods of one test never share files; a terminal when the exec asks for one.

    api.cluster.exec_runner = processes_in(tmp_path)
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import termios
from pathlib import Path

from tests.k8s_server.cluster import ExecRunner, PodProcess
from tests.k8s_server.harness import env_of
from tests.k8s_server.store import Obj

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a Debian image's


def pod_home(root: Path, pod: Obj) -> Path:
    return root / pod["metadata"]["name"] / "home"


def _controlling_terminal() -> None:
    """In the child, after setsid: make its stdin (the terminal) its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def processes_in(root: Path) -> ExecRunner:
    def run(pod: Obj, command: list[str], tty: bool) -> PodProcess:
        home = pod_home(root, pod)
        tmp = home.parent / "tmp"
        (home / "sky_workdir").mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        env = {"PATH": PATH, **env_of(pod), "HOME": str(home), "TMPDIR": str(tmp)}
        env["SKYFORM_STATE_DIR"] = str(home.parent / "state")
        if not tty:
            proc = subprocess.Popen(
                command,
                cwd=home,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            return PodProcess(proc)
        controller, terminal = os.openpty()
        try:
            proc = subprocess.Popen(
                command,
                cwd=home,
                env={**env, "TERM": "xterm"},
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                start_new_session=True,
                preexec_fn=_controlling_terminal,
            )
        except BaseException:
            os.close(controller)
            raise
        finally:
            os.close(terminal)
        return PodProcess(proc, tty=controller)

    return run
