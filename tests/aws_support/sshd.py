"""A private OpenSSH server on 127.0.0.1 standing in for every cloud instance: its own host key
and config in a temporary directory, authorizing one public key, stopped by the caller."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """None when an sshd can be started here, else why not (the tests are then skipped)."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing; scripts/ensure-sshd.sh installs openssh-server"
    if os.geteuid() != 0:
        return "the test sshd runs as root (as CI does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sshd:
    def __init__(self, directory: Path, authorized_key: str) -> None:
        self.directory = directory
        self.port = _free_port()
        directory.mkdir(parents=True, exist_ok=True)
        host_key = directory / "host_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
        keys = directory / "authorized_keys"
        keys.write_text(authorized_key + "\n")
        keys.chmod(0o600)
        self.config = directory / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {keys}\nPermitRootLogin yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "MaxStartups 200\nMaxSessions 50\nLogLevel ERROR\n"
            f"PidFile {directory / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation needs it
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "sshd.log").open("ab"),
        )
        self._wait_listening()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "sshd.log").read_text()
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def kill_node_processes(root: Path) -> None:
    """End the node drivers the tests started (a real instance's termination ends them)."""
    for pid_file in root.glob("*/node-*/state/pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text().strip()), 9)
    shutil.rmtree(root, ignore_errors=True)
