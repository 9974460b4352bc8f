"""The git source: a cached bare clone per (URL), fetched with force, each applied commit checked
out into its own worktree so an apply reads exactly one commit, optionally signature-checked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import git

from schema.errors import SkyformError

_SECRET_IN_URL = re.compile(r"(://[^/:@]+:)[^@/]+@")


class SourceError(SkyformError):
    """The remote could not be read (network, auth, missing branch); retried with backoff."""


class UntrustedCommitError(SkyformError):
    """A commit is unsigned or signed by a key that is not trusted; it is never applied."""


def redact(url: str) -> str:
    """The URL with any password or token hidden, for logs and the status page."""
    return _SECRET_IN_URL.sub(r"\1***@", url)


@dataclass
class Backoff:
    """Exponential backoff for an unreachable remote: base * 2^failures, capped."""

    base: float = 1.0
    cap: float = 300.0
    failures: int = 0
    next_try: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def failed(self, now: float) -> float:
        delay = float(min(self.cap, self.base * 2.0**self.failures))
        self.failures += 1
        self.next_try = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0


class GitSource:
    """Follows one branch of one remote. Not thread-safe: the sync worker alone uses it."""

    def __init__(
        self,
        url: str,
        branch: str,
        cache_root: Path,
        *,
        trusted_keys: Iterable[Path] = (),
        keep_trees: int = 10,
        timeout_s: float = 120.0,
        in_use: Callable[[], set[str]] = set,
    ) -> None:
        self.url = url
        self.branch = branch
        self.keep_trees = keep_trees
        self.timeout_s = timeout_s
        self.in_use = in_use  # tree paths running controllers still read (never pruned)
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.root = cache_root / digest
        self.trees = self.root / "trees"
        self.backoff = Backoff()
        self._repo = self._open()
        self._gpg_home: Path | None = None
        self.trusted: frozenset[str] = frozenset()
        keys = list(trusted_keys)
        if keys:
            self._gpg_home, self.trusted = _import_keys(_gpg_home(self.root, digest), keys)

    def _open(self) -> git.Repo:
        bare = self.root / "repo.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        # Daemons sharing one Skyform home (a leader and its standbys) must not run
        # `git init` on the same cache at once: git refuses a locked config file.
        with (self.root / ".init.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            repo = git.Repo.init(bare, bare=True)
            names = [r.name for r in repo.remotes]
            if "origin" not in names:
                repo.create_remote("origin", self._fetch_url())
            else:
                repo.remote("origin").set_url(self._fetch_url())
        return repo

    def _fetch_url(self) -> str:
        # A plain path is made absolute: the bare clone's cwd is not the user's.
        if "://" in self.url or self.url.startswith("git@") or self.url.startswith("file:"):
            return self.url
        return str(Path(self.url).expanduser().resolve())

    def fetch(self) -> str:
        """The branch head on the remote now. A force-push simply moves it (the refspec
        forces), so a rewritten history is followed rather than refused."""
        ref = f"refs/remotes/origin/{self.branch}"
        try:
            self._repo.git.fetch(
                "origin",
                f"+refs/heads/{self.branch}:{ref}",
                "--no-tags",
                kill_after_timeout=self.timeout_s,
            )
            return str(self._repo.git.rev_parse(f"{ref}^{{commit}}"))
        except git.GitCommandError as exc:
            detail = redact(str(exc.stderr or exc).strip())
            raise SourceError(
                f"cannot fetch branch {self.branch!r} from {redact(self.url)}: {detail}"
            ) from None

    def checkout(self, commit: str) -> Path:
        """A worktree holding exactly `commit` (reused when it is already there)."""
        path = self.trees / commit
        if (path / ".git").is_file() and _head(path) == commit:
            return path
        if path.exists():
            # A crash between `worktree add` and its end leaves a half tree: start over.
            shutil.rmtree(path, ignore_errors=True)
        self._repo.git.worktree("prune")
        self.trees.mkdir(parents=True, exist_ok=True)
        self._repo.git.worktree("add", "--detach", "--force", str(path), commit)
        os.utime(path)
        self._prune(keep=commit)
        return path

    def _prune(self, keep: str) -> None:
        trees = sorted(
            (p for p in self.trees.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        busy = self.in_use()
        for old in trees[: max(0, len(trees) - self.keep_trees)]:
            if old.name != keep and str(old) not in busy:
                shutil.rmtree(old, ignore_errors=True)
        self._repo.git.worktree("prune")

    def verify(self, commit: str) -> str | None:
        """The fingerprint that signed `commit`, None when no keys are configured (signatures
        are not required); raises UntrustedCommitError otherwise."""
        if self._gpg_home is None:
            return None
        env = {**os.environ, "GNUPGHOME": str(self._gpg_home)}
        out = subprocess.run(
            ["git", "--git-dir", str(self._repo.git_dir), "verify-commit", "--raw", commit],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        signer = _valid_signer(out.stderr)
        if out.returncode != 0 or signer is None:
            raise UntrustedCommitError(
                f"commit {commit[:12]} is not signed by a trusted key; it will not be applied "
                "(sign it with a key given by --trusted-key, or push a signed commit)"
            )
        if not any(signer.endswith(k) or k.endswith(signer) for k in self.trusted):
            raise UntrustedCommitError(
                f"commit {commit[:12]} is signed by {signer}, which is not a trusted key"
            )
        return signer


def _head(path: Path) -> str | None:
    try:
        return str(git.Repo(path).head.commit.hexsha)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def _valid_signer(raw: str) -> str | None:
    """The primary-key fingerprint from gpg's VALIDSIG status line, if the signature is good."""
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[:2] == ["[GNUPG:]", "VALIDSIG"]:
            return parts[-1].upper() if len(parts) >= 11 else parts[2].upper()
    return None


def _gpg_home(root: Path, digest: str) -> Path:
    """gpg-agent puts its sockets in the keyring's folder when /run/user is absent, and a UNIX
    socket path is limited to 107 bytes: a deep cache folder makes every gpg call fail."""
    home = root / "gnupg"
    if len(str(home)) <= 64:
        return home
    return Path(tempfile.gettempdir()) / f"skyform-gnupg-{os.getuid()}" / digest[:12]


def _import_keys(home: Path, keys: list[Path]) -> tuple[Path, frozenset[str]]:
    """A keyring of our own holding exactly the trusted keys; returns it and their fingerprints."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise SourceError(
            "signed-commit verification needs gpg, which is not installed here; install gnupg "
            "or drop --trusted-key (then commits are applied unverified)"
        )
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    for key in keys:
        out = subprocess.run(
            [gpg, "--homedir", str(home), "--batch", "--import", str(key)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise SourceError(f"cannot import trusted key {key}: {out.stderr.strip()}")
    listing = subprocess.run(
        [gpg, "--homedir", str(home), "--batch", "--with-colons", "--fingerprint"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    fprs = [ln.split(":")[9] for ln in listing.stdout.splitlines() if ln.startswith("fpr:")]
    if not fprs:
        raise SourceError("no usable public key in the --trusted-key files")
    return home, frozenset(f.upper() for f in fprs)
