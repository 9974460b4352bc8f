"""The daemon's HTTP endpoints: webhook, health, readiness, metrics, JSON status, HTML page."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler.daemon import logs, page, webhook
from reconciler.daemon.metrics import Metrics


@dataclass
class Hooks:
    """What the handlers may ask of the daemon (nothing else reaches it)."""

    snapshot: Callable[[], dict[str, Any]]
    metrics: Metrics
    branch: str
    secret: Callable[[], str | None]
    request_sync: Callable[[str], None]
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    leader: Callable[[], bool]


def _handler(hooks: Hooks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "skyform-reconcile"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # access logs would drown the JSON sync logs; errors are logged where handled

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data, indent=2).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok = hooks.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"sync worker stopped\n")
            elif path == "/readyz":
                ok = hooks.ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready (standby?)\n")
            elif path == "/metrics":
                self._send(200, hooks.metrics.render(), "text/plain; version=0.0.4")
            elif path == "/api/status":
                self._json(200, hooks.snapshot())
            elif path in ("/", "/index.html"):
                html = page.render(hooks.snapshot()).encode()
                self._send(200, html, "text/html; charset=utf-8")
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] not in ("/webhook", "/api/webhook"):
                self._send(404, b"not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > webhook.MAX_BODY:
                self._send(413, b"payload too large\n")
                return
            body = self.rfile.read(length)
            headers = {k: v for k, v in self.headers.items()}
            verdict = webhook.judge(headers, body, hooks.secret(), hooks.branch)
            if verdict.status == 401:
                logs.warning(f"webhook refused: {verdict.message}", client=self.client_address[0])
            if verdict.sync and not hooks.leader():
                self._json(503, {"message": "this replica is a standby; send to the leader"})
                return
            if verdict.sync:
                hooks.request_sync("webhook")
            self._json(verdict.status, {"message": verdict.message})

    return Handler


class Server:
    def __init__(self, host: str, port: int, hooks: Hooks) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(hooks))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
