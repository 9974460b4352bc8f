"""Fixtures for the serving tests: real replica HTTP servers on loopback, balancers, a client.

Every server and balancer made through these fixtures is stopped at teardown. Waits are bounded
(events with a timeout), so a broken balancer fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from applier.serve.lb import LoadBalancer

WAIT = 10.0  # seconds: only ever reached when something is broken
STREAM_STEPS = 3


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server writes head and body separately; with Nagle on, delayed ACKs add ~40 ms each.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        replica = self.server.replica
        body = self._body()
        headers = list(self.headers.items())
        replica.record(self.command, self.path, headers, body, self.client_address[1])
        if replica.mode == "crash":
            # Hang up without answering, like a process dying mid-request.
            self.close_connection = True
            return
        route = self.path.split("?", 1)[0]
        if route == "/block":
            replica.entered.set()
            replica.gate.wait(WAIT)
        if route == "/stream":
            return self._stream(chunked=True)
        if route == "/stream-close":
            return self._stream(chunked=False)
        if route.startswith("/status/"):
            return self._send(int(route.rsplit("/", 1)[1]), b"status\n")
        echo = {
            "replica": replica.name,
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        self._send(200, json.dumps(echo).encode(), "application/json")

    def _send(self, code: int, data: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, chunked: bool) -> None:
        """Server-sent events, one per step; the next is sent only after the test saw this one."""
        replica = self.server.replica
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        for i in range(STREAM_STEPS):
            event = f"data: event {i}\n\n".encode()
            self.wfile.write(b"%x\r\n%b\r\n" % (len(event), event) if chunked else event)
            self.wfile.flush()
            if not replica.stream_steps[i].wait(WAIT):
                return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    replica: Replica

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # handlers writing to connections cut by stop(): expected, not worth a traceback

    def kill_connections(self) -> None:
        with self.sockets_lock:
            for sock in self.open_sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer_port: int


class Replica:
    """A replica process stand-in: a threaded HTTP server on a free loopback port."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.seen: list[Seen] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.stream_steps = [threading.Event() for _ in range(STREAM_STEPS)]
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.replica = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()
        self._stopped = False

    def record(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, peer: int
    ) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, headers, body, peer))

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.seen)

    def stop(self) -> None:
        """Stop as a killed process does: connections cut, new ones refused."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._server.kill_connections()
        self.gate.set()  # lets handler threads blocked mid-request end (on a dead socket)
        for step in self.stream_steps:
            step.set()
        self._thread.join(WAIT)


@pytest.fixture
def make_replica() -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(name: str = "r", mode: str = "ok") -> Replica:
        made.append(Replica(f"{name}{len(made)}", mode))
        return made[-1]

    yield make
    for replica in made:
        replica.stop()


@pytest.fixture
def make_lb() -> Iterator[Callable[..., LoadBalancer]]:
    made: list[LoadBalancer] = []

    def make(replicas: list[Replica] | None = None, **kwargs: Any) -> LoadBalancer:
        lb = LoadBalancer(**kwargs).start()
        made.append(lb)
        lb.set_replicas([r.url for r in replicas or []])
        return lb

    yield make
    for lb in made:
        lb.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    lb: LoadBalancer,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request through the balancer (on `conn` when given, to test keep-alive)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", lb.port, timeout=WAIT)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        if own:
            c.close()


@pytest.fixture
def fetch() -> Callable[..., Reply]:
    return request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
