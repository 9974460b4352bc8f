"""Pod port-forward over WebSocket, as the API server speaks it to `kubernetes.stream.portforward`
(subprotocol `v4.channel.k8s.io`): for the i-th port of the `ports` query, channel 2i carries
data both ways and channel 2i+1 errors (server to client); each channel's first server frame is
the port number, 2 bytes little-endian. A pod's port N here is 127.0.0.1:N on the test machine.

A refused port is reported as the real kubelet does: text on its error channel. The connection
ends when the client sends a close frame, or, once every target has closed its end, with the
server's own close frame.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler

from tests.k8s_server.exec_ws import BINARY, CLOSE, PING, PONG, Sender, handshake, read_frame

POD_HOST = "127.0.0.1"  # where a pod's ports are
CONNECT_TIMEOUT_S = 5.0


class _Session:
    def __init__(self, handler: BaseHTTPRequestHandler, ports: list[int]) -> None:
        self._in = handler.rfile
        self._lock = threading.Lock()
        self._ports = ports
        self._targets: dict[int, socket.socket] = {}  # data channel -> connection
        self._open = 0
        self.send = Sender(handler.wfile).send

    def run(self) -> None:
        for ix, port in enumerate(self._ports):
            prefix = struct.pack("<H", port)
            self.send(BINARY, bytes([2 * ix]) + prefix)
            self.send(BINARY, bytes([2 * ix + 1]) + prefix)
            try:
                conn = socket.create_connection((POD_HOST, port), timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                message = f"error forwarding port {port} to pod: dial tcp4 {POD_HOST}:{port}: {exc}"
                self.send(BINARY, bytes([2 * ix + 1]) + message.encode())
                continue
            conn.settimeout(None)
            self._targets[2 * ix] = conn
            self._open += 1
            threading.Thread(target=self._pump, args=(2 * ix, conn), daemon=True).start()
        if not self._targets:
            self.send(CLOSE, struct.pack(">H", 1000))
        try:
            self._read_client()
        finally:
            for conn in self._targets.values():
                # shutdown first: a close alone neither wakes the pump blocked in recv() on
                # it nor sends the pod's end its FIN while that recv() holds the socket.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()

    def _pump(self, channel: int, conn: socket.socket) -> None:
        """The pod's bytes to the client; when every target has ended, the session does."""
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                self.send(BINARY, bytes([channel]) + data)
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self.send(CLOSE, struct.pack(">H", 1000))

    def _read_client(self) -> None:
        while (frame := read_frame(self._in)) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                self.send(CLOSE, payload[:2])
                return
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode == BINARY and payload:
                conn = self._targets.get(payload[0])
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.sendall(payload[1:])


def serve(handler: BaseHTTPRequestHandler, ports: list[int]) -> None:
    """Answer a portforward upgrade request for `ports` until either side ends it."""
    handshake(handler)
    _Session(handler, ports).run()
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)
