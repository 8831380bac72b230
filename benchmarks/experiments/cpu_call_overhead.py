"""What a whole call costs beyond the kernel on a CPU: the headline op on TensorFlow tensors.

    python benchmarks/experiments/cpu_call_overhead.py --json benchmarks/experiments/cpu_call_overhead-cpu-znver3.json

In turns, in one process, on the same input (median of `--repeats`): `op(x)` on a tf.Tensor (the
whole call: DLPack in and out, the output from the op's pool, `output_pool.py`), the kernel into a
fresh output each call (what `op(x)` did before the pool: a 32 MB allocation whose pages fault in
on first touch), the kernel into one reused output (`op.run`), and `tf.nn.conv2d`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    import tensorflow as tf
    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import targets
    from tvm_sparseconv.baselines import interleaved_median_wall
    from tvm_sparseconv.workloads import HEADLINE, random_pruned_kernel

    rng = np.random.default_rng(0)
    w = random_pruned_kernel(HEADLINE.kernel_shape, HEADLINE.density, rng)
    x = tf.constant(rng.standard_normal(HEADLINE.input_shape, dtype=np.float32))
    op = tsc.compile(tsc.SparseKernel.from_dense(w), x.shape, padding="SAME", target="cpu")
    x_tvm = tvm.runtime.tensor(x.numpy())
    reused = tvm.runtime.empty(op.output_shape, "float32", tvm.cpu())

    def fresh(_):
        op.run(x_tvm, tvm.runtime.empty(op.output_shape, "float32", tvm.cpu()))

    runs = {
        "op(x) on a tf.Tensor (pooled output)": lambda _: op(x),
        "kernel into a fresh output": fresh,
        "kernel into a reused output": lambda _: op.run(x_tvm, reused),
        "tf.nn.conv2d": lambda _: tf.nn.conv2d(x, w, 1, "SAME"),
    }
    ref = tf.nn.conv2d(tf.cast(x, tf.float64), tf.constant(w, tf.float64), 1, "SAME").numpy()
    err = float(np.linalg.norm(op(x).numpy() - ref) / np.linalg.norm(ref))
    times = dict(zip(runs, interleaved_median_wall(list(runs.values()), args.repeats)))
    for name, secs in times.items():
        print(f"{secs * 1e3:8.1f} ms  {name}")
    print(f"relative error of op(x) vs float64: {err:.1e}")
    if args.json:
        args.json.write_text(json.dumps({
            "script": "benchmarks/experiments/cpu_call_overhead.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "target": str(targets.resolve_target("cpu")), "schedule": op.schedule_source,
            "repeats": args.repeats, "relative_error": err, "seconds": times}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
