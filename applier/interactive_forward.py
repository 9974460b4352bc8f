"""`skyform port-forward`: a listener on 127.0.0.1 whose every connection is relayed to a port
on a node, through whatever byte stream the node's provider opens (`Interactive.connect`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from applier.interactive import Activity, Duplex, relay
from schema.errors import ProviderError


class PortForward:
    """Listens on 127.0.0.1:`local_port` (0: any free port, see `.port`) only, never on other
    interfaces: the node's port is as private as the user's own machine."""

    def __init__(
        self,
        connect: Callable[[], Duplex],
        local_port: int,
        activity: Activity,
        log: Callable[[str], None],
    ) -> None:
        self._connect = connect
        self._activity = activity
        self._log = log
        try:
            self._server = socket.create_server(("127.0.0.1", local_port))
        except OSError as exc:
            raise ProviderError(f"cannot listen on 127.0.0.1:{local_port}: {exc}") from exc
        self.port: int = self._server.getsockname()[1]

    def serve(self, stop: threading.Event | None = None) -> None:
        """Accept until `stop` is set (or this thread is interrupted: Ctrl-C)."""
        self._server.settimeout(0.5)  # so that `stop` is seen without a connection arriving
        try:
            while stop is None or not stop.is_set():
                try:
                    client, _ = self._server.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                threading.Thread(target=self._handle, args=(client,), daemon=True).start()
        finally:
            self._server.close()

    def _handle(self, client: socket.socket) -> None:
        self._activity.note()
        try:
            upstream = self._connect()
        except ProviderError as exc:
            self._log(str(exc))
            client.close()
            return
        relay(client, upstream, self._activity.note)
