"""A fake cloud's HTTP server on 127.0.0.1, served from a daemon thread until `stop()`."""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class Served:
    """Subclasses call `_serve` with their (bound, not yet serving) server."""

    _server: socketserver.TCPServer
    _thread: threading.Thread

    def _serve(self, server: socketserver.TCPServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
