"""Pod exec over WebSocket, as the API server speaks it to `kubernetes.stream`: the upgrade
handshake (subprotocol `v5.channel.k8s.io` when the client offers it, else
`v4.channel.k8s.io`), then channel-prefixed binary frames: 0 stdin (client to server), 1 stdout,
2 stderr, 3 the exit status as a `Status`, 4 terminal resizes (`{"Width": .., "Height": ..}`),
and with v5 only, 255 "close channel N" (the client's end of stdin); then a close frame.

Two ways to answer: `serve` a scripted (exit code, output), or `stream` a real process (see
`tests.k8s_server.pod_exec`): stdin frames go to its stdin (or terminal), its output comes
back as it is written, and the stream ends with its exit status.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import termios
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import BinaryIO

from tests.k8s_server.cluster import PodProcess

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed key suffix
V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_CHANNEL = 0, 1, 2, 3, 4, 255
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
DRAIN_S = 1.0  # a background child may hold the output open after the command ends
CLOSE_WAIT_S = 2.0  # how long the client gets to answer our close frame


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server-to-client) frame with FIN set."""
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([len(payload)])
    elif len(payload) < 2**16:
        head += bytes([126]) + struct.pack(">H", len(payload))
    else:
        head += bytes([127]) + struct.pack(">Q", len(payload))
    return head + payload


def read_frame(rfile: BinaryIO) -> tuple[int, bytes] | None:
    """One (masked, client-to-server) frame's opcode and payload; None at end of stream.
    Fragmented messages are not expected: the client sends every chunk as one frame."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", rfile.read(2))
    elif length == 127:
        (length,) = struct.unpack(">Q", rfile.read(8))
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    payload = rfile.read(length)
    if len(payload) < length:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Sender:
    """Frames to the client from several threads; nothing is sent after a close frame."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.closed = False

    def send(self, opcode: int, payload: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            if opcode == CLOSE:
                self.closed = True
            with contextlib.suppress(OSError):
                self._out.write(frame(opcode, payload))
                self._out.flush()

    def close(self) -> None:
        self.send(CLOSE, struct.pack(">H", 1000))


def status(code: int) -> bytes:
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    ).encode()


def handshake(handler: BaseHTTPRequestHandler, supported: Iterable[str] = (V4,)) -> str:
    """Accept a WebSocket upgrade with the first subprotocol the client offers that is
    `supported` (else v4, as servers before v5 did); the one chosen."""
    offered = [p.strip() for p in (handler.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
    chosen = next((p for p in offered if p in set(supported)), V4)
    key = handler.headers.get("Sec-WebSocket-Key", "")
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", chosen)
    handler.end_headers()
    return chosen


def _finish(handler: BaseHTTPRequestHandler, wait_s: float) -> None:
    """Wait (briefly) for the client's close frame, so it is not answered with a reset."""
    conn = handler.connection
    conn.settimeout(wait_s)
    with contextlib.suppress(TimeoutError, OSError):
        conn.recv(1024)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def serve(handler: BaseHTTPRequestHandler, code: int, output: str) -> None:
    """Answer an exec upgrade request with `output` and exit `code`, then close."""
    handshake(handler, (V5, V4))
    out = Sender(handler.wfile)
    if output:
        out.send(BINARY, bytes([STDOUT]) + output.encode())
    out.send(BINARY, bytes([ERROR]) + status(code))
    out.close()
    _finish(handler, CLOSE_WAIT_S)


class _Stream:
    """One exec of a real process: see `stream`."""

    def __init__(self, handler: BaseHTTPRequestHandler, pod: PodProcess, protocol: str) -> None:
        self._in = handler.rfile
        self._out = Sender(handler.wfile)
        self._pod = pod
        self._protocol = protocol
        self._stdin_lock = threading.Lock()

    def run(self, stdin: bool) -> None:
        proc = self._pod.proc
        if not stdin:
            self._close_stdin()
        if self._pod.tty is not None:
            sources = [(STDOUT, self._pod.tty)]
        else:
            assert proc.stdout is not None and proc.stderr is not None
            sources = [(STDOUT, proc.stdout.fileno()), (STDERR, proc.stderr.fileno())]
        pumps = [
            threading.Thread(target=self._pump, args=source, daemon=True) for source in sources
        ]
        reader = threading.Thread(target=self._read_client, daemon=True)
        for thread in [*pumps, reader]:
            thread.start()
        code = proc.wait()
        for pump in pumps:
            pump.join(timeout=DRAIN_S)
        self._out.send(BINARY, bytes([ERROR]) + status(128 - code if code < 0 else code))
        self._out.close()
        reader.join(timeout=CLOSE_WAIT_S)

    def _pump(self, channel: int, fd: int) -> None:
        """The process's output to the client as it comes (EIO: a terminal whose last
        writer is gone)."""
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                self._out.send(BINARY, bytes([channel]) + data)

    def _read_client(self) -> None:
        """Stdin, resizes and the end of stdin from the client; when the client goes away (a
        close frame, or the connection drops) the process is ended."""
        try:
            while (got := read_frame(self._in)) is not None:
                opcode, payload = got
                if opcode == CLOSE:
                    self._out.send(CLOSE, payload[:2])
                    return
                if opcode == PING:
                    self._out.send(PONG, payload)
                elif opcode in (TEXT, BINARY) and payload:
                    self._channel(payload[0], payload[1:])
        except (OSError, ValueError, KeyError, struct.error):
            pass  # the connection broke, or the client sent what no client should
        finally:
            self._end_process()

    def _channel(self, channel: int, data: bytes) -> None:
        if channel == STDIN:
            self._write_stdin(data)
        elif channel == CLOSE_CHANNEL and self._protocol == V5 and data[:1] == bytes([STDIN]):
            self._close_stdin()
        elif channel == RESIZE and self._pod.tty is not None:
            size = json.loads(data or b"{}")
            winsize = struct.pack("HHHH", int(size["Height"]), int(size["Width"]), 0, 0)
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._pod.tty, termios.TIOCSWINSZ, winsize)

    def _write_stdin(self, data: bytes) -> None:
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            if self._pod.tty is not None:
                os.write(self._pod.tty, data)
            elif self._pod.proc.stdin is not None:
                self._pod.proc.stdin.write(data)
                self._pod.proc.stdin.flush()

    def _close_stdin(self) -> None:
        """The end of stdin: closed for a pipe; for a terminal the EOF character, as a
        terminal's user would type it."""
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            if self._pod.tty is not None:
                os.write(self._pod.tty, b"\x04")
            elif self._pod.proc.stdin is not None:
                self._pod.proc.stdin.close()

    def _end_process(self) -> None:
        """The client is gone: the process and its group are killed (a real kubelet may leave
        a process that ignores its stdin running; tests must leave nothing behind)."""
        proc = self._pod.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def stream(handler: BaseHTTPRequestHandler, pod: PodProcess, stdin: bool) -> None:
    """Answer an exec upgrade request by relaying `pod`'s process until it exits (or the client
    leaves); its exit status ends the stream. Without `stdin` the process's stdin is closed at
    once, as the kubelet gives it none."""
    protocol = handshake(handler, (V5, V4))
    try:
        _Stream(handler, pod, protocol).run(stdin)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.proc.pid, signal.SIGKILL)  # what it left in the background
        pod.proc.wait()
        for pipe in (pod.proc.stdin, pod.proc.stdout, pod.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if pod.tty is not None:
            with contextlib.suppress(OSError):
                os.close(pod.tty)
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
