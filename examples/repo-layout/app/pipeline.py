"""Two pipeline stages: `prepare` writes a CSV, `summarise` reads it back."""

import argparse
import csv
import statistics

parser = argparse.ArgumentParser()
parser.add_argument("stage", choices=["prepare", "summarise"])
parser.add_argument("--out")
parser.add_argument("--data")
args = parser.parse_args()

if args.stage == "prepare":
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "value"])
        for step in range(100):
            writer.writerow([step, (step * 37) % 101])
    print(f"prepared 100 rows in {args.out}")
else:
    with open(args.data, newline="") as f:
        values = [int(row["value"]) for row in csv.DictReader(f)]
    print(f"rows {len(values)} mean {statistics.mean(values):.2f} max {max(values)}")
