"""Summarise ncu's warp-stall sampling per kernel and per SASS instruction (no GPU needed).

    ncu --section SourceCounters --section WarpStateStats -k regex:sparse_conv2d -o rep python ...
    ncu -i rep.ncu-rep --page source --csv --print-source sass > sass.csv
    python benchmarks/experiments/ncu_stalls.py sass.csv --top 16

Prints, per kernel, the samples by stall reason and the instructions with the most samples (their
top three reasons).
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path, help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--top", type=int, default=25, help="instructions to list per kernel")
    args = ap.parse_args(argv)
    kernel, header, kernels = None, None, collections.defaultdict(list)
    with args.csv.open(newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                kernel = f"{row[1]} #{len(kernels)}"
            elif row and row[0] == "Address":
                header = row
            elif header and len(row) == len(header):
                kernels[kernel].append(dict(zip(header, row)))
    samples = "Warp Stall Sampling (All Samples)"
    for name, rows in kernels.items():
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        count = lambda r, h: int(r[h] or 0)  # noqa: E731
        total = sum(count(r, samples) for r in rows)
        print(f"== {name}: {len(rows)} instructions, {total} samples, "
              f"{sum(count(r, 'Instructions Executed') for r in rows)} warp instructions executed")
        by_reason = sorted(((sum(count(r, h) for r in rows), h[6:]) for h in reasons), reverse=True)
        print("   by reason:", ", ".join(f"{h} {v}" for v, h in by_reason if v))
        for r in sorted(rows, key=lambda r: -count(r, samples))[:args.top]:
            top = sorted(((count(r, h), h[6:]) for h in reasons if count(r, h)), reverse=True)[:3]
            print(f"   {r['Address'][-5:]} {r['Source'].strip()[:60]:60s} samples {count(r, samples):5d} "
                  f"executed {count(r, 'Instructions Executed'):8d} {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
