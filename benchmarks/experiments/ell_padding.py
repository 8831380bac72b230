"""How many multiply-adds the ELL format pads on ResNet-50's pruned kernels (numpy only, no timing).

    python benchmarks/experiments/ell_padding.py --json benchmarks/experiments/ell_padding-resnet50.json

ell-gather (CPU and CUDA) walks every output channel's nonzeros to the kernel's ELL width (the
longest channel), with zero weights past a channel's own count: per layer, that width times the
channels over the nonzeros is the work done per useful multiply-add. Kernels: the benchmark's own
magnitude-pruned ones (`Problem.dense_kernel()`), per distinct shape of the network sets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import tvm_sparseconv as tsc
from tvm_sparseconv.workloads import workload_set

SETS = "resnet50_network_s90_b1,resnet50_network_s95_b1"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=SETS, help="workload sets, comma-separated")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'layer':44s} {'count':>5s} {'ELL width':>9s} {'mean':>7s} {'padded/useful':>13s}")
    for problem in workload_set(args.sets):
        kernel = tsc.SparseKernel.from_dense(problem.dense_kernel())
        counts = np.asarray(kernel.counts)
        ratio = kernel.ell_width * len(counts) / max(int(counts.sum()), 1)
        rows.append({"layer": problem.name, "count": problem.count, "nonzeros": int(counts.sum()),
                     "ell_width": int(kernel.ell_width), "mean_per_channel": float(counts.mean()),
                     "padded_per_useful": ratio})
        print(f"{problem.name:44s} {problem.count:5d} {kernel.ell_width:9d} {counts.mean():7.1f} {ratio:13.2f}")
    if args.json:
        args.json.write_text(json.dumps({"script": "benchmarks/experiments/ell_padding.py", "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
