"""HTTP/1.1 framing for the load balancer: message heads, request bodies, relaying response bodies.

Just enough of RFC 9112 for a reverse proxy: Content-Length, chunked, and bodies that end when
the connection closes. Bytes are latin-1 in heads, as the RFC allows, and opaque in bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

MAX_HEAD_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024

# Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

Length = int | Literal["chunked", "close"]
Write = Callable[[bytes], Awaitable[None]]


class BadMessage(Exception):
    """The peer sent something that is not HTTP/1.x (or too big a head)."""


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Head:
    """A request or status line and its header fields, in order, as received."""

    first: str
    headers: tuple[tuple[str, str], ...]
    _by_name: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: every request looks several fields up, and this is the hot path.
        by_name: dict[str, list[str]] = {}
        for k, v in self.headers:
            by_name.setdefault(k.lower(), []).append(v)
        object.__setattr__(self, "_by_name", by_name)

    def get(self, name: str) -> str | None:
        values = self._by_name.get(name.lower())
        return values[0] if values else None

    def tokens(self, name: str) -> set[str]:
        """Lower-cased comma-separated values over every field of that name."""
        out: set[str] = set()
        for v in self._by_name.get(name.lower(), ()):
            out.update(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def end_to_end(self, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """Fields worth forwarding: no hop-by-hop ones, none the Connection field names."""
        skip = HOP_BY_HOP | self.tokens("connection") | drop
        return [(k, v) for k, v in self.headers if k.lower() not in skip]


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise BadMessage(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return Head(lines[0], tuple(headers))


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the peer closed cleanly between messages."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("connection closed in the middle of a message head") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadMessage(f"message head larger than {MAX_HEAD_BYTES} bytes") from exc
    # RFC 9112 §2.2: a server should ignore empty lines before a request line.
    return parse_head(raw.lstrip(b"\r\n"))


def parse_request_line(head: Head) -> tuple[str, str, str]:
    parts = head.first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadMessage(f"not an HTTP/1.x request line: {head.first[:80]!r}")
    method, target, version = parts
    if target.startswith(("http://", "https://")):
        # Absolute form (a client treating us as a proxy): replicas expect origin form.
        rest = target.split("//", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return method, target, version


def parse_status(head: Head) -> int:
    parts = head.first.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BadMessage(f"not an HTTP status line: {head.first[:80]!r}")
    return int(parts[1])


def plain_response(status: HTTPStatus, message: str, method: str, keep: bool) -> bytes:
    """A short text/plain response of the balancer's own (no body for HEAD)."""
    body = (message + "\n").encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    )
    return head.encode() + (b"" if method == "HEAD" else body)


def request_length(head: Head) -> Length:
    if "chunked" in head.tokens("transfer-encoding"):
        return "chunked"
    return _content_length(head) or 0


def response_length(head: Head, status: int, method: str) -> Length:
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    if "chunked" in head.tokens("transfer-encoding"):
        return "chunked"
    n = _content_length(head)
    return "close" if n is None else n


def _content_length(head: Head) -> int | None:
    value = head.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadMessage(f"invalid Content-Length {value!r}")
    return int(value)


async def _chunk_size(reader: asyncio.StreamReader) -> int:
    line = await reader.readuntil(b"\n")
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError as exc:
        raise BadMessage(f"invalid chunk size line {line[:40]!r}") from exc


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\n")).strip():
        pass


async def read_body(reader: asyncio.StreamReader, length: Length, limit: int) -> bytes:
    """A whole request body (buffered, so that it can be retried on another replica)."""
    if isinstance(length, int):
        if length > limit:
            raise BodyTooLarge(length)
        return await reader.readexactly(length) if length else b""
    parts: list[bytes] = []
    total = 0
    while size := await _chunk_size(reader):
        total += size
        if total > limit:
            raise BodyTooLarge(total)
        parts.append((await reader.readexactly(size + 2))[:size])
    await _skip_trailers(reader)
    return b"".join(parts)


async def relay_body(
    reader: asyncio.StreamReader, length: Length, write: Write, client_http11: bool, timeout: float
) -> None:
    """Copy a response body to `write` as it arrives, so streamed responses stay streamed.

    A body without a length (or arriving chunked) goes to an HTTP/1.1 client in chunks, which
    keeps its connection reusable; an HTTP/1.0 client gets the bytes and then a close.
    `timeout` bounds the wait for each piece, not the whole body (an LLM may stream for long).
    """
    chunked_out = client_http11 and not isinstance(length, int)

    async def piece(n: int) -> bytes:
        async with asyncio.timeout(timeout):
            return await reader.read(n)

    async def out(data: bytes) -> None:
        await write(b"%x\r\n%b\r\n" % (len(data), data) if chunked_out else data)

    if length == "chunked":
        while True:
            async with asyncio.timeout(timeout):
                size = await _chunk_size(reader)
                data = await reader.readexactly(size + 2) if size else b""
            if not size:
                break
            await out(data[:size])
        async with asyncio.timeout(timeout):
            await _skip_trailers(reader)
    elif length == "close":
        while data := await piece(_READ_SIZE):
            await out(data)
    else:
        left = length
        while left:
            data = await piece(min(left, _READ_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await write(data)
    if chunked_out:
        await write(b"0\r\n\r\n")
