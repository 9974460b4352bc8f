"""The daemon's HTTP side, in process: signed webhooks trigger a sync, anything else is refused
and changes nothing; health, metrics, JSON status and the HTML page in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from reconciler.daemon.webhook import judge, sign
from tests.reconciler.daemon._support import Remote, cluster, config, http, live, metric, wait_for

SECRET = "s3cret-for-tests"


@pytest.fixture
def served(tmp_path: Path, skyform_home: Path) -> Iterator[tuple[Daemon, Remote, str]]:
    remote = Remote(tmp_path)
    remote.commit({"skyform.yaml": config(poll="1h"), "clusters/box.yaml": cluster("box")})
    daemon = Daemon(
        Settings(
            repo=remote.url,
            home=skyform_home,
            webhook_secret=SECRET,
            lease_s=5.0,
            listen=("127.0.0.1", 0),
        )
    )
    daemon.start()
    assert daemon.http is not None
    host, port = daemon.http.address
    base = f"http://{host}:{port}"
    try:
        wait_for("the first sync", lambda: http(f"{base}/readyz")[0] == 200)
        yield daemon, remote, base
    finally:
        daemon.stop()


def _idle(daemon: Daemon) -> bool:
    q = daemon.queue()
    return not q["busy"] and not q["pending"]


def _push(commit: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": commit}).encode()


def test_signed_webhooks_sync_and_unsigned_ones_change_nothing(
    served: tuple[Daemon, Remote, str], skyform_home: Path
) -> None:
    daemon, remote, base = served
    first = daemon.status.get("last_applied_commit")
    wait_for("the worker to be idle", lambda: _idle(daemon))
    commit = remote.commit({"clusters/gpu.yaml": cluster("gpu")})
    body = _push(commit)
    syncs = metric(http(f"{base}/metrics")[1].decode(), "skyform_syncs_total")

    refused = [
        {"X-Hub-Signature-256": sign(body, "wrong-secret")},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Gitlab-Token": "wrong-secret"},
        {},
    ]
    for headers in refused:
        code, answer = http(f"{base}/webhook", body, headers)
        assert code == 401, (headers, answer)
        # The request was judged before the answer: had it asked for a sync, it would show.
        assert _idle(daemon)
    text = http(f"{base}/metrics")[1].decode()
    assert metric(text, "skyform_syncs_total") == syncs
    assert daemon.status.get("last_applied_commit") == first
    assert "cluster.gpu" not in live(skyform_home)

    code, _ = http(f"{base}/webhook", body, {"X-Hub-Signature-256": sign(body, SECRET)})
    assert code == 202
    wait_for("the webhook sync", lambda: daemon.status.get("last_applied_commit") == commit)
    assert daemon.status.get("last_sync")["trigger"] == "webhook"
    assert "cluster.gpu" in live(skyform_home)

    gitlab = remote.commit({"clusters/gpu.yaml": None})
    code, _ = http(f"{base}/webhook", _push(gitlab), {"X-Gitlab-Token": SECRET})
    assert code == 202
    wait_for("the GitLab sync", lambda: daemon.status.get("last_applied_commit") == gitlab)
    assert "cluster.gpu" not in live(skyform_home)


def test_webhook_verdicts() -> None:
    body = _push("abc")
    ok = {"X-Hub-Signature-256": sign(body, SECRET)}
    assert judge(ok, body, SECRET, "main").sync
    assert judge(ok, body, None, "main").status == 401  # no secret configured: refuse all
    assert judge(ok, body + b" ", SECRET, "main").status == 401  # body tampered with
    other = json.dumps({"ref": "refs/heads/dev"}).encode()
    verdict = judge({"X-Hub-Signature-256": sign(other, SECRET)}, other, SECRET, "main")
    assert verdict.status == 200 and not verdict.sync
    ping = {**ok, "X-GitHub-Event": "ping"}
    assert judge(ping, body, SECRET, "main").message == "pong"


class _Page(HTMLParser):
    """Collects the text of every element with an id, and the table rows' addresses."""

    VOID = frozenset({"meta", "br", "link", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.rows: list[str] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("data-address"):
            self.rows.append(str(found["data-address"]))
        if tag not in self.VOID:
            self._open.append((tag, found.get("id")))
            if found.get("id"):
                self.ids.setdefault(str(found["id"]), "")

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, name in self._open:
            if name:
                self.ids[name] += data


def _rendered(url: str) -> tuple[str, str]:
    """The page as a real browser renders it (Debian's chromium), else the raw HTML."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        code, body = http(url)
        assert code == 200
        return body.decode(), "stdlib parser (chromium is not installed)"
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout, "chromium"


def test_status_page_health_and_metrics(served: tuple[Daemon, Remote, str]) -> None:
    _, _, base = served
    assert http(f"{base}/healthz")[0] == 200
    status = json.loads(http(f"{base}/api/status")[1])
    assert status["role"] == "leader" and status["last_applied_commit"]
    text = http(f"{base}/metrics")[1].decode()
    assert metric(text, 'skyform_resources{kind="cluster",status="UP"}') == 1
    assert metric(text, "skyform_leader") == 1
    assert (
        f'skyform_last_successful_sync_commit_info{{commit="{status["last_applied_commit"]}"}}'
        in text
    )

    html, how = _rendered(f"{base}/")
    page = _Page()
    page.feed(html)
    assert page.rows == ["cluster.box"], how
    assert page.ids["role"] == "leader", how
    assert page.ids["applied"] == status["last_applied_commit"][:12], how
    assert "UP" in html and "local" in html, how
    assert page.ids["plan-summary"].startswith("Plan:"), how
    print(f"status page checked with {how}")
