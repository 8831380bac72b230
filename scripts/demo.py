#!/usr/bin/env python
"""The project's main job, on any machine: prune a kernel, compile it, run it on TensorFlow tensors.

Headline case: 1x256x512x32 input, 11x11x32x64 kernel, 10% nonzeros, SAME padding. The sparse op
is compiled for this machine (CUDA if TVM sees a GPU, else the CPU), checked against
`tf.nn.conv2d` in float64, and both are timed side by side in this one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tvm  # noqa: E402

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv.baselines import median_wall  # noqa: E402
from tvm_sparseconv.workloads import HEADLINE, random_pruned_kernel  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", type=float, default=HEADLINE.density, help="fraction of nonzeros kept (default 0.1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per op (median reported)")
    ap.add_argument("--target", default=None, help="'cpu' or 'cuda' (default: CUDA if TVM sees a GPU, else CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    wl = HEADLINE
    rng = np.random.default_rng(args.seed)
    print(f"headline case: input {wl.input_shape}, kernel {wl.kernel_shape}, {args.density:.0%} nonzeros, SAME")
    w = random_pruned_kernel(wl.kernel_shape, args.density, rng)
    x = tf.constant(rng.standard_normal(wl.input_shape, dtype=np.float32))

    t0 = time.perf_counter()
    kernel = tsc.SparseKernel.from_dense(w)
    t_convert = time.perf_counter() - t0
    print(f"sparse kernel: {kernel.nnz} nonzeros ({kernel.density:.2%}), ELL width {kernel.ell_width}"
          f"  [converted once in {t_convert * 1e3:.0f} ms]")

    t0 = time.perf_counter()
    conv = tsc.compile(kernel, x.shape, padding="SAME", target=args.target)
    t_compile = time.perf_counter() - t0
    print(f"compiled for {conv.target.kind.name} ({conv.schedule_source}) in {t_compile:.1f} s")

    y = conv(x)
    ref = tf.nn.conv2d(tf.cast(x, tf.float64), tf.constant(w, tf.float64), 1, "SAME").numpy()
    err = float(np.linalg.norm(y.numpy() - ref) / np.linalg.norm(ref))
    print(f"relative error vs float64 tf.nn.conv2d: {err:.2e}  {'OK' if err <= 1e-5 else 'FAILED'}")

    wt = tf.constant(w)
    dense = lambda i: tf.nn.conv2d(x, wt, 1, "SAME").numpy()  # noqa: E731 - .numpy() waits for the result
    sparse = lambda i: conv(x).numpy()  # noqa: E731
    t_dense = median_wall(dense, args.repeats, warmup=1)
    t_sparse = median_wall(sparse, args.repeats, warmup=1)
    useful = conv.workload.useful_flops(kernel.nnz)
    print()
    print(f"{'op':<28}{'median time':>14}{'GFLOP/s (useful)':>20}")
    print(f"{'tf.nn.conv2d (dense)':<28}{t_dense * 1e3:>11.1f} ms{useful / t_dense / 1e9:>20.1f}")
    print(f"{'tvm_sparseconv':<28}{t_sparse * 1e3:>11.1f} ms{useful / t_sparse / 1e9:>20.1f}")
    print(f"speed-up: {t_dense / t_sparse:.2f}x  (median of {args.repeats}, same process, same input)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "script": "scripts/demo.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "target": str(conv.target)},
            "versions": {"tvm": tvm.__version__, "tensorflow": tf.__version__, "numpy": np.__version__},
            "workload": conv.workload.to_json() | {"density": args.density}, "nnz": kernel.nnz,
            "schedule": conv.schedule_source, "relative_error": err, "repeats": args.repeats,
            "seconds": {"tf_conv2d": t_dense, "sparse": t_sparse, "convert": t_convert, "compile": t_compile},
            "speedup": t_dense / t_sparse,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if err <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
