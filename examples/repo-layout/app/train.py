"""Fits y = 3x + 2 by gradient descent: a stand-in for a training job, no downloads."""

import argparse
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

rng = random.Random(0)
xs = [rng.uniform(-1, 1) for _ in range(256)]
ys = [3 * x + 2 + rng.gauss(0, 0.05) for x in xs]
w, b = 0.0, 0.0
for epoch in range(args.epochs):
    gw = sum((w * x + b - y) * x for x, y in zip(xs, ys, strict=True)) * 2 / len(xs)
    gb = sum((w * x + b - y) for x, y in zip(xs, ys, strict=True)) * 2 / len(xs)
    w, b = w - args.lr * gw, b - args.lr * gb
    if epoch % 50 == 0 or epoch == args.epochs - 1:
        loss = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)
        print(f"epoch {epoch} loss {loss:.5f} w {w:.3f} b {b:.3f}", flush=True)
print(f"done: w={w:.3f} b={b:.3f} on node {os.environ.get('SKYPILOT_NODE_RANK', '?')}")
