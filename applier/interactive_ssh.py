"""OpenSSH glue: Skyform's keys under `<home>/ssh/`, the generated client config (one `Host` per
cluster node), the `Include` line for `~/.ssh/config`, and the config of a per-connection
`sshd -i` that a ProxyCommand runs for nodes without an sshd of their own.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from applier.interactive import SshTarget, for_provider
from applier.provider import Handle
from schema.errors import ProviderError
from state import Resource

LOCAL_HOST_KEY_ALIAS = "skyform-local"
# `python -m reconciler.cli` by absolute path: editors (VS Code) run ssh without the venv on PATH.
DEFAULT_PROXY_ARGV = (sys.executable, "-m", "reconciler.cli", "ssh-proxy")
SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
)


@dataclass(frozen=True)
class SshKeys:
    """Skyform's client key (authorized on proxied nodes) and the host key those nodes show."""

    directory: Path

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.directory / "host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    @property
    def targets(self) -> Path:
        """The handles the config's ProxyCommands reach, written with the config, so a proxy
        started by an editor needs neither the state store's URL nor its credentials."""
        return self.directory / "targets.json"


def ssh_dir(home: Path) -> Path:
    return home / "ssh"


def _new_key(path: Path) -> None:
    """A new private key at `path`, unless another process (a cloud provider's launch shares
    this key) made one first: theirs is kept, since instances may already trust it."""
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
        os.link(tmp, path)  # never replaces an existing key, unlike a rename
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _public(path: Path) -> str:
    """The public line of the key at `path` (made when missing), derived from the private key
    itself, so a missing or stale `.pub` never leads to trusting the wrong key."""
    if not path.exists():
        _new_key(path)
    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():
        _write(pub, line.decode() + " skyform\n", mode=0o644)
    return line.decode()


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomic, and private from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def ensure_keys(home: Path) -> SshKeys:
    """Create the keys once (under a lock: apply and an editor's ssh may race here)."""
    keys = SshKeys(ssh_dir(home))
    keys.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (keys.directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = _public(keys.client_key)
        host = _public(keys.host_key)
        _write(keys.authorized_keys, client + "\n")
        _write(keys.known_hosts, f"{LOCAL_HOST_KEY_ALIAS} {host}\n")
    return keys


def host_name(address: str, node: int) -> str:
    """SkyPilot's names: the head is the cluster's name, worker N is `<name>-worker<N>`."""
    name = address.partition(".")[2] or address
    return name if node == 0 else f"{name}-worker{node}"


def _path(path: Path) -> str:
    return f'"{path}"' if " " in str(path) else str(path)


def host_block(
    address: str, node: int, target: SshTarget, keys: SshKeys, proxy_argv: Sequence[str]
) -> str:
    lines = [
        f"Host {host_name(address, node)}",
        f"  HostName {target.hostname}",
        f"  User {target.user}",
        f"  IdentityFile {_path(target.identity_file or keys.client_key)}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_path(keys.known_hosts)}",
    ]
    if target.port is not None:
        lines.append(f"  Port {target.port}")
    if target.host_key_alias:
        lines += [f"  HostKeyAlias {target.host_key_alias}", "  StrictHostKeyChecking yes"]
    else:
        lines.append("  StrictHostKeyChecking accept-new")
    if target.proxy:
        argv = [*proxy_argv, address, "--node", str(node), "--home", str(keys.directory.parent)]
        # ssh expands %-tokens in ProxyCommand; a literal % is written %%.
        lines.append("  ProxyCommand " + shlex.join(argv).replace("%", "%%"))
    return "\n".join(lines) + "\n"


HEADER = """\
# Generated by Skyform: one Host per cluster node, rewritten by `skyform apply`, `destroy` and
# `ssh-config`; edits are lost. Use it from ~/.ssh/config: `skyform ssh-config --install`.
"""


def write_ssh_config(
    home: Path, records: Iterable[Resource], proxy_argv: Sequence[str] = DEFAULT_PROXY_ARGV
) -> Path:
    """Rewrite `<home>/ssh/config` for the clusters in `records` (a state store's resources);
    return its path. Clusters whose provider Skyform cannot connect to yet get a comment."""
    keys = ensure_keys(home)
    blocks, targets = [HEADER], {}
    for record in sorted(records, key=lambda r: r.address):
        handle_data = (record.handles or {}).get("handle")
        if record.kind != "cluster" or not handle_data:
            continue
        handle = Handle.from_dict(handle_data)
        try:
            iact = for_provider(handle.provider, home)
            found = [iact.ssh_target(handle, n) for n in range(handle.num_nodes)]
        except ProviderError as exc:
            blocks.append(f"# {record.address}: {exc}\n")
            continue
        targets[record.address] = handle.as_dict()
        blocks += [host_block(record.address, n, t, keys, proxy_argv) for n, t in enumerate(found)]
    _write(keys.targets, json.dumps(targets, indent=1, sort_keys=True))
    _write(keys.config, "\n".join(blocks))
    return keys.config


def target_handle(home: Path, address: str) -> Handle:
    """The handle a ProxyCommand for `address` reaches (see `SshKeys.targets`)."""
    keys = SshKeys(ssh_dir(home))
    try:
        data: dict[str, Any] = json.loads(keys.targets.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    if address not in data:
        raise ProviderError(
            f"{address} is not in {keys.config}; run `skyform ssh-config` to regenerate it"
        )
    return Handle.from_dict(data[address])


def include_line(home: Path) -> str:
    return f"Include {_path(SshKeys(ssh_dir(home)).config)}"


def install_include(home: Path, user_config: Path) -> bool:
    """Put the Include line first in `user_config` (an Include after a `Host` line would apply
    to that host only); False when it is there already."""
    line = include_line(home)
    text = user_config.read_text() if user_config.exists() else ""
    if line in (existing.strip() for existing in text.splitlines()):
        return False
    user_config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(user_config, f"{line}\n\n{text}" if text else f"{line}\n")
    return True


def sshd_path() -> str:
    """sshd by absolute path (it refuses to run otherwise); ProviderError when not installed."""
    found = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ProviderError(
            "OpenSSH's server (sshd) is not installed here; install openssh-server "
            "(apt-get install openssh-server, or the project's scripts/ensure-sshd.sh)"
        )
    return found


def sshd_config(keys: SshKeys, session_script: Path) -> str:
    """An `sshd -i` that lets in only this user with Skyform's key and runs every session
    (shell, command, sftp) through `session_script`; forwarding stays on for VS Code."""
    sftp = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), "internal-sftp")
    lines = [
        f"HostKey {_path(keys.host_key)}",
        f"AuthorizedKeysFile {_path(keys.authorized_keys)}",
        f"AllowUsers {getpass.getuser()}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",  # the keys live under the Skyform home, whatever its permissions
        "PidFile none",
        "LogLevel ERROR",
        "PrintMotd no",
        "PrintLastLog no",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        f"Subsystem sftp {sftp}",
        f"ForceCommand /bin/sh {shlex.quote(str(session_script))}",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["SshKeys", "ensure_keys", "install_include", "write_ssh_config"]
