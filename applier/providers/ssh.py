"""SSH to cloud instances (paramiko), shared by the AWS and GCP providers: Skyform's key pair,
where a node is reached (with the test-only host override), connecting while it boots, running
commands and moving files over SFTP.

`SKYFORM_SSH_HOST_OVERRIDE=HOST:PORT` (or a provider setting `ssh_host_override`) makes every
node resolve to that one address. It exists for tests, where an sshd on 127.0.0.1 stands in for
every instance; it is never applied unless set explicitly, and nodes then get separate home
directories on that host (see `applier.providers.ssh_node`).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schema.errors import ProviderError

OVERRIDE_ENV = "SKYFORM_SSH_HOST_OVERRIDE"
KEY_NAME = "id_ed25519"  # <home>/ssh/id_ed25519: the client key `skyform ssh` uses too
KEY_COMMENT = "skyform"


@dataclass(frozen=True)
class Target:
    """One node's SSH address. `isolated` is set under the host override: several nodes share
    one host there, so each must keep its files (and its HOME) apart."""

    host: str
    port: int
    user: str
    key_path: Path
    isolated: bool = False


@contextmanager
def key_lock(directory: Path) -> Iterator[None]:
    """Hold `<directory>/.lock` (made with the directory, 0700), so that processes sharing a
    Skyform home (apply, the daemon, an editor's ssh) make and read its keys one at a time.
    Not re-entrant: flock locks are per open file, even within one process."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def key_line(path: Path) -> str:
    """The public line (`ssh-ed25519 AAAA...`, no comment) of the private key at `path`, made
    when missing (Ed25519, 0600, written whole; an existing key is never replaced). The line
    is derived from the private key itself, so a missing or stale `.pub` never leads to
    trusting the wrong key; a missing `.pub` is written. Call it under `key_lock`."""
    if not path.exists():
        private = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        try:
            os.link(tmp, path)  # whole or absent; never replaces a key made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    data = path.read_bytes()
    try:
        key: Any = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm):
        try:  # an older PEM key the user put there
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
            raise ProviderError(f"cannot read the SSH key {path}: {exc}") from exc
    line: str = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        tmp = public.with_name(f".{public.name}.{os.getpid()}.new")
        tmp.write_text(f"{line} {KEY_COMMENT}\n")
        os.replace(tmp, public)
    return line


def ensure_key(home: Path) -> tuple[Path, str]:
    """Skyform's SSH client key (made at first use): its path and public line (with the
    comment `skyform`). The same key `skyform ssh` and OpenSSH clients use."""
    directory = home / "ssh"
    private = directory / KEY_NAME
    with key_lock(directory):
        line = key_line(private)
    return private, f"{line} {KEY_COMMENT}"


def parse_override(settings: Mapping[str, Any]) -> tuple[str, int] | None:
    """The explicit host override (setting first, then the environment), if any."""
    raw = settings.get("ssh_host_override") or os.environ.get(OVERRIDE_ENV)
    if not raw:
        return None
    host, sep, port = str(raw).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ProviderError(f"{OVERRIDE_ENV}={raw!r} must be HOST:PORT, e.g. 127.0.0.1:2222")
    return host, int(port)


def target(address: str | None, settings: Mapping[str, Any], user: str, key_path: Path) -> Target:
    """Where to reach a node whose public (else private) address is `address`."""
    override = parse_override(settings)
    if override is not None:
        return Target(override[0], override[1], user, key_path, isolated=True)
    if not address:
        raise ProviderError("the instance has no IP address yet; try again when it runs")
    return Target(address, 22, user, key_path)


_RETRYABLE = (OSError, EOFError, paramiko.SSHException)  # incl. auth before the key lands


def connect(t: Target, deadline_s: float, interval_s: float = 2.0) -> paramiko.SSHClient:
    """Connect, retrying while the instance boots (sshd not up, key not installed yet)."""
    deadline = time.monotonic() + deadline_s
    while True:
        client = paramiko.SSHClient()
        # Fresh instances have host keys nobody could have recorded (SkyPilot also skips the
        # check); the key pair authenticates us, the instance id was chosen by the cloud API.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=str(t.key_path),
                timeout=10,
                banner_timeout=10,
                auth_timeout=10,
                allow_agent=False,
                look_for_keys=False,
            )
            return client
        except _RETRYABLE as exc:
            client.close()
            if time.monotonic() + interval_s > deadline:
                raise ProviderError(
                    f"cannot reach {t.user}@{t.host}:{t.port} over SSH within {deadline_s:g}s: "
                    f"{exc or type(exc).__name__}; check that the security group allows port 22"
                ) from exc
            time.sleep(interval_s)


def run(
    client: paramiko.SSHClient, command: str, stdin: bytes = b"", timeout: float | None = None
) -> tuple[int, str]:
    """Run `command` (the login shell of the node's user); (exit code, stdout+stderr as text)."""
    try:
        chan = client.get_transport().open_session()
        chan.settimeout(timeout)
        chan.set_combine_stderr(True)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out = bytearray()
        while True:
            chunk = chan.recv(65536)
            if not chunk:
                break
            out += chunk
        code = chan.recv_exit_status()
        chan.close()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise ProviderError(f"SSH command failed: {exc or type(exc).__name__}") from exc
    return code, out.decode(errors="replace")


def check(client: paramiko.SSHClient, command: str, what: str) -> str:
    code, out = run(client, command)
    if code != 0:
        raise ProviderError(f"{what} failed on the node (exit {code}): {out.strip()[-500:]}")
    return out


def put_text(sftp: paramiko.SFTPClient, path: str, text: str, mode: int = 0o644) -> None:
    """Write a remote file whole: a temporary name, then a rename."""
    tmp = f"{path}.tmp"
    with sftp.open(tmp, "w") as fh:
        fh.write(text.encode())
    sftp.chmod(tmp, mode)
    sftp.posix_rename(tmp, path)


def put_tree(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    """Copy a local file or directory to `remote` (directories merged; symlinks followed)."""
    if local.is_dir():
        _mkdirs(sftp, remote)
        for child in sorted(local.iterdir()):
            put_tree(sftp, child, str(PurePosixPath(remote) / child.name))
    else:
        _mkdirs(sftp, str(PurePosixPath(remote).parent))
        sftp.put(str(local), remote)


def _mkdirs(sftp: paramiko.SFTPClient, remote: str) -> None:
    parts = PurePosixPath(remote).parts
    for i in range(1, len(parts) + 1):
        path = str(PurePosixPath(*parts[:i]))
        try:
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                raise ProviderError(f"{path} exists on the node and is not a directory")
        except FileNotFoundError:
            sftp.mkdir(path)


def fetch_new(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
    """Append to `local` what `remote` gained since the last fetch (logs only ever grow)."""
    try:
        size = sftp.stat(remote).st_size or 0
    except FileNotFoundError:
        return
    have = local.stat().st_size if local.exists() else 0
    if size <= have:
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    with sftp.open(remote, "rb") as src, local.open("ab") as dst:
        src.seek(have)
        while chunk := src.read(1 << 20):
            dst.write(chunk)
