"""Pod exec over WebSocket, as the API server speaks it to `kubernetes.stream`: the upgrade
handshake with the `v4.channel.k8s.io` subprotocol, output on channel 1, the exit status as a
`Status` on channel 3, then a close frame.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
from http.server import BaseHTTPRequestHandler

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed key suffix


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server-to-client) frame with FIN set."""
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([len(payload)])
    elif len(payload) < 2**16:
        head += bytes([126]) + struct.pack(">H", len(payload))
    else:
        head += bytes([127]) + struct.pack(">Q", len(payload))
    return head + payload


def _status(code: int) -> bytes:
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


def handshake(handler: BaseHTTPRequestHandler) -> None:
    """Accept a WebSocket upgrade with the `v4.channel.k8s.io` subprotocol."""
    key = handler.headers.get("Sec-WebSocket-Key", "")
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    handler.end_headers()


def serve(handler: BaseHTTPRequestHandler, code: int, output: str) -> None:
    """Answer an exec upgrade request with `output` and exit `code`, then close."""
    handshake(handler)
    out = handler.wfile
    if output:
        out.write(_frame(0x2, b"\x01" + output.encode()))
    out.write(_frame(0x2, b"\x03" + _status(code)))
    out.write(_frame(0x8, struct.pack(">H", 1000)))
    out.flush()
    # Wait (briefly) for the client's close frame, so it is not answered with a reset.
    conn = handler.connection
    conn.settimeout(2.0)
    with contextlib.suppress(TimeoutError, OSError):
        conn.recv(1024)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
