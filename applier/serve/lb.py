"""The service load balancer: an HTTP/1.1 reverse proxy on 127.0.0.1 in front of ready replicas.

Runs its own asyncio loop in a background thread (`start()` / `stop()`), so the daemon can embed
it; `set_replicas()` may be called from any thread. Semantics follow SkyServe's balancer: a
policy picks a replica, a replica that cannot be reached is retried on another (3 attempts), and
with none ready the client gets a 503 that says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from types import TracebackType

from applier.serve.http1 import (
    MAX_HEAD_BYTES,
    BadMessage,
    BodyTooLarge,
    Head,
    parse_request_line,
    parse_status,
    plain_response,
    read_body,
    read_head,
    relay_body,
    request_length,
    response_length,
)
from applier.serve.policies import Policy, make_policy
from applier.serve.upstream import Connection, Pool, UpstreamFailed, replica_address

LB_MAX_ATTEMPTS = 3
STREAM_TIMEOUT_SECONDS = 120.0
CONNECT_TIMEOUT_SECONDS = 5.0
KEEPALIVE_IDLE_SECONDS = 75.0
MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024
REQUEST_WINDOW_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 10.0


class _ResponseBroken(Exception):
    """The response broke off after it started: the client connection must be dropped."""


class LoadBalancer:
    """A reverse proxy on `host:port` (port 0 picks a free one; see `.port` after `start()`)."""

    def __init__(
        self,
        port: int = 0,
        policy: str | Policy | None = None,
        *,
        host: str = "127.0.0.1",
        stream_timeout_seconds: float = STREAM_TIMEOUT_SECONDS,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        max_attempts: int = LB_MAX_ATTEMPTS,
        max_request_body_bytes: int = MAX_REQUEST_BODY_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy if isinstance(policy, Policy) else make_policy(policy)
        self._host = host
        self._port = port
        self._stream_timeout = stream_timeout_seconds
        self._max_attempts = max_attempts
        self._max_body = max_request_body_bytes
        self._clock = clock
        self._pool = Pool(connect_timeout_seconds)
        self._stamps: collections.deque[float] = collections.deque()
        self._stamps_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control, from any thread ------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> LoadBalancer:
        """Bind and serve in a background thread; raises OSError if the port is taken."""
        if self._thread is not None:
            raise RuntimeError("load balancer already started")
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name=f"skyform-lb:{self._port}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and wait for the thread to end."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(_STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set_replicas(self, urls: Sequence[str]) -> None:
        """Replace the ready set; requests already in flight finish where they are."""
        for url in urls:
            replica_address(url)
        self.policy.set_ready(urls)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._pool.retain, frozenset(urls))

    @property
    def replicas(self) -> list[str]:
        return self.policy.ready

    def request_timestamps(self) -> list[float]:
        """Arrival times of the requests in the last 60 s (the autoscaler's QPS window)."""
        with self._stamps_lock:
            self._prune(self._clock())
            return list(self._stamps)

    def drain_request_timestamps(self) -> list[float]:
        """Arrival times not handed over yet, then forgotten: feed them to the autoscaler."""
        with self._stamps_lock:
            self._prune(self._clock())
            out = list(self._stamps)
            self._stamps.clear()
            return out

    def _prune(self, now: float) -> None:
        while self._stamps and self._stamps[0] < now - REQUEST_WINDOW_SECONDS:
            self._stamps.popleft()

    def _record_request(self) -> None:
        now = self._clock()
        with self._stamps_lock:
            self._stamps.append(now)
            self._prune(now)

    # -- the event loop ----------------------------------------------------------------------

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._on_client, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            self._startup_error = exc
            self._started.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.close_all()
        await server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        try:
            while await self._serve_one(reader, writer, client_ip):
                pass
        except BadMessage as exc:
            with contextlib.suppress(OSError):
                await _reply(writer, HTTPStatus.BAD_REQUEST, str(exc), "GET", keep=False)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, _ResponseBroken):
            pass  # the client went away or the response broke off: just close
        except asyncio.CancelledError:
            # Only stop() cancels these. Ending normally spares Python 3.11's stream callback,
            # which logs a cancelled handler task as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_ip: str
    ) -> bool:
        """Answer one request; True when the client connection stays open for another."""
        async with asyncio.timeout(KEEPALIVE_IDLE_SECONDS):
            head = await read_head(reader)
        if head is None:
            return False
        method, target, version = parse_request_line(head)
        self._record_request()
        http11 = version == "HTTP/1.1"
        keep = http11 and "close" not in head.tokens("connection")
        length = request_length(head)
        if length and "100-continue" in head.tokens("expect"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(self._stream_timeout):  # a client trickling a body
                body = await read_body(reader, length, self._max_body)
        except BodyTooLarge:
            msg = f"request body over {self._max_body} bytes"
            await _reply(writer, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, msg, method, keep=False)
            return False
        host = head.get("host") or f"{self._host}:{self._port}"
        data = _upstream_request(method, target, head, body, client_ip, host)
        return await self._proxy(method, data, writer, http11, keep)

    async def _proxy(
        self, method: str, data: bytes, writer: asyncio.StreamWriter, http11: bool, keep: bool
    ) -> bool:
        tried: list[str] = []
        errors: list[str] = []
        for _ in range(self._max_attempts):
            url = self.policy.select(exclude=tried)
            if url is None:
                break
            tried.append(url)
            self.policy.started(url)
            try:
                return await self._forward(url, method, data, writer, http11, keep)
            except UpstreamFailed as exc:
                errors.append(str(exc))
            finally:
                self.policy.finished(url)
        if not tried:
            msg = 'No ready replicas. Run "skyform status" to see the replicas of this service.'
        else:
            msg = f"No replica answered after {len(tried)} attempt(s): " + "; ".join(errors)
        await _reply(writer, HTTPStatus.SERVICE_UNAVAILABLE, msg, method, keep)
        return keep

    async def _exchange(self, conn: Connection, data: bytes) -> Head:
        """Send the request and read the final response head; any failure is UpstreamFailed."""
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            async with asyncio.timeout(self._stream_timeout):
                head = await read_head(conn.reader)
                while head is not None and parse_status(head) < 200:
                    head = await read_head(conn.reader)  # interim 1xx: the final one follows
        except TimeoutError:  # an OSError too, but not one to retry: see _forward
            conn.close()
            raise
        except (OSError, asyncio.IncompleteReadError, BadMessage) as exc:
            conn.close()
            raise UpstreamFailed(f"{conn.url}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if head is None:
            conn.close()
            raise UpstreamFailed(f"{conn.url} closed the connection without answering")
        return head

    async def _forward(
        self,
        url: str,
        method: str,
        data: bytes,
        writer: asyncio.StreamWriter,
        http11: bool,
        keep: bool,
    ) -> bool:
        conn = await self._pool.acquire(url)
        try:
            try:
                head = await self._exchange(conn, data)
            except UpstreamFailed:
                if not conn.reused:
                    raise
                # An idle connection the replica had already closed says nothing about the
                # replica: try once more on a fresh connection before counting a failure.
                conn = await self._pool.connect(url)
                head = await self._exchange(conn, data)
        except TimeoutError:
            # Not retried: the replica has the request and may still be working on it.
            msg = f"replica {url} did not answer within {self._stream_timeout:g} s"
            await _reply(writer, HTTPStatus.GATEWAY_TIMEOUT, msg, method, keep)
            return keep
        return await self._respond(conn, head, method, writer, http11, keep)

    async def _respond(
        self,
        conn: Connection,
        head: Head,
        method: str,
        writer: asyncio.StreamWriter,
        http11: bool,
        keep: bool,
    ) -> bool:
        try:
            length = response_length(head, parse_status(head), method)
        except BadMessage as exc:
            conn.close()
            raise UpstreamFailed(f"{conn.url}: {exc}") from exc
        lines = [f"HTTP/1.1 {head.first.split(' ', 1)[1]}"]
        lines += [f"{k}: {v}" for k, v in head.end_to_end()]
        if not isinstance(length, int) and http11:
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: " + ("keep-alive" if keep else "close"))
        pending = [("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")]

        async def write(chunk: bytes) -> None:
            writer.write(pending.pop() + chunk if pending else chunk)
            await writer.drain()

        try:
            if not isinstance(length, int) or length == 0:
                # A stream's head goes out now (a client may wait on it before the first
                # event); a sized body follows at once, so the head rides with it: one send.
                await write(b"")
            await relay_body(conn.reader, length, write, http11, self._stream_timeout)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, Exception):
                raise _ResponseBroken(str(exc)) from exc
            raise
        upstream_keep = head.first.startswith("HTTP/1.1") and "close" not in head.tokens(
            "connection"
        )
        if upstream_keep and isinstance(length, int):
            self._pool.release(conn)
        else:
            conn.close()
        return keep


def _upstream_request(
    method: str, target: str, head: Head, body: bytes, client_ip: str, host: str
) -> bytes:
    """The request as the replica gets it: the body buffered whole, so it has a length.

    Host is the one the client addressed (the balancer's), so redirects and absolute URLs a
    replica builds point back through the balancer.
    """
    drop = frozenset({"host", "content-length", "expect", "x-forwarded-for"})
    fields = [("Host", host), *head.end_to_end(drop)]
    forwarded = head.get("x-forwarded-for")
    fields.append(("X-Forwarded-For", f"{forwarded}, {client_ip}" if forwarded else client_ip))
    if head.get("x-forwarded-proto") is None:
        fields.append(("X-Forwarded-Proto", "http"))
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(body))))
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _reply(
    writer: asyncio.StreamWriter, status: HTTPStatus, message: str, method: str, keep: bool
) -> None:
    writer.write(plain_response(status, message, method, keep))
    await writer.drain()
