"""Run one benchmark layer's compiled kernel(s) a few times, for a profiler (ncu/nsys) to look at.

    ncu --metrics gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active \\
        python benchmarks/experiments/profile_layer.py resnet50_conv5_3x3_b1

The layer is compiled as `compile()` picks it (tuning record or untuned template), run on random
input, checked against float64 first (an incorrect kernel is not worth profiling).
"""

from __future__ import annotations

import argparse

import numpy as np
import tvm

import tvm_sparseconv as tsc
from tvm_sparseconv import reference
from tvm_sparseconv.workloads import workload_set


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problems", help="problem names or workload sets, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="runs per layer after the checked one")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for problem in workload_set(args.problems):
        w = problem.dense_kernel()
        op = tsc.compile(tsc.SparseKernel.from_dense(w), problem.input_shape, strides=problem.strides,
                         padding=problem.padding, target="cuda")
        x = rng.standard_normal(op.workload.input_shape, dtype=np.float32)
        dev = tvm.cuda(0)
        x_dev = tvm.runtime.tensor(x, dev)
        out = tvm.runtime.tensor(np.full(op.workload.output_shape, np.nan, np.float32), dev)
        op.run(x_dev, out)
        err = reference.relative_error(out.numpy(), reference.conv2d_f64(x, w, op.workload))
        print(f"{problem.name}: {op.schedule_source}, relative error {err:.1e}")
        for _ in range(args.runs):
            op.run(x_dev, out)
        dev.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
