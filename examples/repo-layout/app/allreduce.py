"""Sums 1..1000 across all nodes: each rank sums its slice, rank 0 gathers over TCP.

Uses the variables SkyPilot sets on every node: SKYPILOT_NODE_RANK, SKYPILOT_NUM_NODES and
SKYPILOT_NODE_IPS (one IP per line, rank 0 first).
"""

import os
import socket
import time

rank = int(os.environ["SKYPILOT_NODE_RANK"])
nodes = int(os.environ["SKYPILOT_NUM_NODES"])
head = os.environ["SKYPILOT_NODE_IPS"].splitlines()[0]
port = int(os.environ.get("ALLREDUCE_PORT", "29517"))
partial = sum(range(1 + rank, 1001, nodes))
print(f"rank {rank}/{nodes}: partial sum {partial}", flush=True)

if rank == 0:
    total = partial
    with socket.create_server((head, port)) as server:
        server.settimeout(120)
        for _ in range(nodes - 1):
            conn, _ = server.accept()
            with conn:
                total += int(conn.recv(64).decode())
    print(f"total {total} (expected {sum(range(1, 1001))})", flush=True)
    if total != sum(range(1, 1001)):
        raise SystemExit(1)
else:
    for _ in range(240):
        try:
            with socket.create_connection((head, port), timeout=5) as conn:
                conn.sendall(str(partial).encode())
                break
        except OSError:
            time.sleep(0.5)
    else:
        raise SystemExit(f"rank {rank}: could not reach rank 0 at {head}:{port}")
