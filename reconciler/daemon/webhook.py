"""Push webhooks from GitHub (HMAC-SHA256 over the body) and GitLab (shared token): who sent
it, whether it is authentic, and whether it concerns the branch the daemon follows."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

MAX_BODY = 5 * 1024 * 1024  # GitHub caps payloads at 25 MB; a push to an infra repo is far less


@dataclass(frozen=True)
class Verdict:
    status: int  # 202 sync, 200 nothing to do, 401 refused
    message: str
    sync: bool = False


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get(name.lower())


def authentic(headers: Mapping[str, str], body: bytes, secret: str | None) -> str | None:
    """None when the request proves it knows the secret, else why it is refused."""
    if not secret:
        return "no webhook secret is configured (set SKYFORM_WEBHOOK_SECRET); refusing all"
    signature = _header(headers, "X-Hub-Signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(signature.strip(), expected):
            return None
        return "X-Hub-Signature-256 does not match the body signed with the webhook secret"
    token = _header(headers, "X-Gitlab-Token")
    if token is not None:
        if hmac.compare_digest(token.encode(), secret.encode()):
            return None
        return "X-Gitlab-Token does not match the webhook secret"
    return "no X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab) header"


def judge(headers: Mapping[str, str], body: bytes, secret: str | None, branch: str) -> Verdict:
    why = authentic(headers, body, secret)
    if why is not None:
        return Verdict(401, why)
    event = _header(headers, "X-GitHub-Event") or _header(headers, "X-Gitlab-Event") or "push"
    if event == "ping":
        return Verdict(200, "pong")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    ref = payload.get("ref") if isinstance(payload, dict) else None
    # A push elsewhere (another branch, a tag) is acknowledged but starts nothing.
    if isinstance(ref, str) and ref != f"refs/heads/{branch}":
        return Verdict(200, f"ignored: {ref} is not refs/heads/{branch}")
    return Verdict(202, "sync requested", sync=True)


def sign(body: bytes, secret: str) -> str:
    """The X-Hub-Signature-256 value GitHub would send (tests and the bench use it)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
