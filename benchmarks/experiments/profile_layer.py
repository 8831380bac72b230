"""Run one benchmark layer's compiled kernel(s) a few times, for a profiler (ncu/nsys) to look at.

    ncu --metrics gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active \\
        python benchmarks/experiments/profile_layer.py resnet50_conv5_3x3_b1

The layer is compiled as `compile()` picks it (tuning record or untuned template), or with
`--tiles a,b` as kernels of those tiles of a generated algorithm (`--algorithm`, default
register-reuse; one after the other, in that order: ncu's `-k regex:sparse_conv2d` then sees them
in turn), run on random input, checked against float64 first (an incorrect kernel is not worth
profiling).

    ncu --section SpeedOfLight --section WarpStateStats -k regex:sparse_conv2d \
        python benchmarks/experiments/profile_layer.py resnet50_conv4_1x1_expand_b1 \
        --algorithm csr-split-k --tiles p32q2r64k64t256,p32q2r64k64t256C --runs 1
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
    ap.add_argument("--tiles", default="", help="tiles of --algorithm to run instead of compile()'s choice")
    ap.add_argument("--algorithm", default="register-reuse", help="the generated algorithm whose --tiles run")
    ap.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                    help="compile()'s precision where no --tiles are given (tf32: TF32 algorithms allowed)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for problem in workload_set(args.problems):
        w = problem.dense_kernel()
        kernel = tsc.SparseKernel.from_dense(w)
        wl = problem.workload(kernel)
        runs = []  # (label, run(x, out))
        if args.tiles:
            from tvm_sparseconv import algorithms

            alg = algorithms.by_name(args.algorithm)
            gwl = algorithms.workload_for(kernel, wl, alg.name)
            packed = [tvm.runtime.tensor(np.asarray(a), tvm.cuda(0)) for a in algorithms.pack_weights(gwl, kernel)]
            for t in args.tiles.split(","):
                f = alg.build(kernel, gwl, alg.tiles()[t]).mod["sparse_conv2d"]
                runs.append((f"{alg.name} {t}", lambda x, o, f=f: f(x, *packed, o)))
        else:
            op = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding,
                             target="cuda", precision=args.precision)
            runs.append((op.schedule_source, op.run))
        x = rng.standard_normal(wl.input_shape, dtype=np.float32)
        dev = tvm.cuda(0)
        x_dev = tvm.runtime.tensor(x, dev)
        ref = reference.conv2d_f64(x, w, wl)
        for label, run in runs:
            out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
            run(x_dev, out)
            err = reference.relative_error(out.numpy(), ref)
            print(f"{problem.name}: {label}, relative error {err:.1e}", flush=True)
            for _ in range(args.runs):
                run(x_dev, out)
            dev.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
