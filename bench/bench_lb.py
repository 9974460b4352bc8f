"""Load balancer throughput versus hitting a replica directly, as a ratio (loopback only).

A replica (a minimal asyncio HTTP/1.1 server) and the balancer each run in their own process, as
they do in a deployment; a client in this process keeps C keep-alive connections busy for N
requests, first straight at the replica, then through the balancer. Both runs share the machine,
so the ratio is what to read; absolute numbers depend on the cores free at the time.
Run: python bench/bench_lb.py [--requests N] [--concurrency C] [--body-bytes B] [--replicas R]
    [--replica-delay-ms D]   (D > 0 stands in for a replica doing real work per request)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def _replica(body_bytes: int, delay_ms: float) -> None:
    body = b"x" * body_bytes
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                for line in raw.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)  # stands in for a model's work
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def _balancer(replicas: list[str], policy: str) -> None:
    sys.path.insert(0, str(ROOT))
    from applier.serve.lb import LoadBalancer

    lb = LoadBalancer(policy=policy).start()
    lb.set_replicas(replicas)
    print(lb.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    lb.stop()


async def _client(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    left = [requests]
    latencies: list[float] = []
    request = b"GET /v1/ping HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            raw = await reader.readuntil(b"\r\n\r\n")
            if not raw.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad response: {raw[:60]!r}")
            length = next(
                int(line.split(b":")[1])
                for line in raw.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start), latencies


def _spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _measure(label: str, port: int, args: argparse.Namespace) -> float:
    asyncio.run(_client(port, min(200, args.requests), args.concurrency))  # warm up
    rate, lat = asyncio.run(_client(port, args.requests, args.concurrency))
    p50 = statistics.median(lat) * 1000
    p99 = statistics.quantiles(lat, n=100)[98] * 1000
    print(f"{label:>10}: {rate:9.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--body-bytes", type=int, default=256)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--replica-delay-ms", type=float, default=0.0)
    parser.add_argument("--policy", default="least_load")
    parser.add_argument("--role", choices=["replica", "balancer"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "replica":
        asyncio.run(_replica(args.body_bytes, args.replica_delay_ms))
        return 0
    if args.role == "balancer":
        _balancer(args.upstream, args.policy)
        return 0

    procs: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for _ in range(args.replicas):
            proc, port = _spawn(
                "--role",
                "replica",
                "--body-bytes",
                str(args.body_bytes),
                "--replica-delay-ms",
                str(args.replica_delay_ms),
            )
            procs.append(proc)
            ports.append(port)
        upstream = [a for p in ports for a in ("--upstream", f"http://127.0.0.1:{p}")]
        proc, lb_port = _spawn("--role", "balancer", "--policy", args.policy, *upstream)
        procs.append(proc)
        print(
            f"{args.requests} requests, {args.concurrency} connections, "
            f"{args.body_bytes} B bodies, {args.replicas} replica(s), {args.policy}, "
            f"replica delay {args.replica_delay_ms:g} ms"
        )
        direct = _measure("direct", ports[0], args)
        via_lb = _measure("balancer", lb_port, args)
        print(f"ratio balancer/direct: {via_lb / direct:.2f}")
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
