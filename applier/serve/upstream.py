"""Connections from the load balancer to replicas: connecting, and keeping idle ones for reuse.

Reuse matters on the hot path: a fresh TCP connection per request roughly halves throughput.
Lives on the balancer's event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from applier.serve.http1 import MAX_HEAD_BYTES


class UpstreamFailed(Exception):
    """The replica could not be reached or hung up before answering: safe to try another."""


@dataclass
class Connection:
    url: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


def replica_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"replica URL {url!r} is not http://HOST:PORT")
    return parts.hostname, parts.port or 80


class Pool:
    def __init__(self, connect_timeout: float, max_idle_per_replica: int = 32) -> None:
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_replica
        self._idle: dict[str, list[Connection]] = {}

    async def acquire(self, url: str) -> Connection:
        idle = self._idle.get(url, [])
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            conn.reused = True
            return conn
        return await self.connect(url)

    async def connect(self, url: str) -> Connection:
        host, port = replica_address(url)
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
        except (OSError, TimeoutError) as exc:
            raise UpstreamFailed(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
        return Connection(url, reader, writer)

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.url, [])
        if len(idle) < self._max_idle and not conn.writer.is_closing():
            idle.append(conn)
        else:
            conn.close()

    def retain(self, urls: Collection[str]) -> None:
        """Close idle connections to replicas no longer in the ready set."""
        for url in [u for u in self._idle if u not in urls]:
            for conn in self._idle.pop(url):
                conn.close()

    def close_all(self) -> None:
        self.retain(())
