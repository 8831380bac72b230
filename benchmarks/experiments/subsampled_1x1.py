#!/usr/bin/env python
"""Strided 1x1 layers on this CPU: computed on a copy of the pixels they read (the default since
stop 31; since stop 33 the one-phase case of `stride_phases`) against strided reads (before), in turns. (tf.nn.conv2d on
these layers: `scripts/bench.py`; not in this process, whose timing its threads would disturb.)

  python benchmarks/experiments/subsampled_1x1.py --json benchmarks/experiments/subsampled_1x1-cpu-znver4.json

Layers: ResNet-50 v1.5's three stride-2 projections (the benchmark sets' `*_proj_s2_b1`) and the
three stride-2 1x1 reductions of Keras's ResNet50 (v1: the stride sits on the block's first 1x1).
Each op is checked against float64 on a NaN-poisoned output before it is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

KERAS_V1 = [  # (name, input hw, cin, cout): Keras ResNet50's strided first 1x1 of conv3-5
    ("keras_conv3_block1_1_s2_b1", 56, 256, 128),
    ("keras_conv4_block1_1_s2_b1", 28, 512, 256),
    ("keras_conv5_block1_1_s2_b1", 14, 1024, 512),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)

    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import baselines, reference, targets
    from tvm_sparseconv.workloads import Problem, workload_set

    targets.configure_cpu_threads()
    warnings.simplefilter("ignore")  # untuned layers warn once each; the schedule is in the JSON
    problems = [workload_set(f"resnet50_conv{i}_1x1_proj_s2_b1")[0] for i in (3, 4, 5)]
    problems += [Problem(n, (1, hw, hw, cin), (1, 1, cin, cout), 0.1, strides=2) for n, hw, cin, cout in KERAS_V1]
    target = targets.host_cpu_target()
    rows = []
    for p in problems:
        w = p.dense_kernel()
        kernel = tsc.SparseKernel.from_dense(w)
        ops = {}
        for mode in ("subsampled", "strided"):
            tsc.op.SparseConv2D.phase_strided = mode == "subsampled"
            t0 = time.perf_counter()
            ops[mode] = (tsc.op.SparseConv2D(kernel, p.workload(kernel), target, None), time.perf_counter() - t0)
        tsc.op.SparseConv2D.phase_strided = True
        x = np.random.default_rng(1).standard_normal(p.input_shape).astype(np.float32)
        ref = reference.conv2d_f64(x, w, p.workload(kernel))
        xt = tvm.runtime.tensor(x)
        row = {"layer": p.name, "input_shape": list(p.input_shape), "kernel_shape": list(p.kernel_shape),
               "nnz": int(kernel.nnz)}
        fns = []
        for mode, (op, compile_s) in ops.items():
            out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32))
            op.run(xt, out)
            row[mode] = {"schedule": op.schedule_source, "conv_input_shape": list(op.conv_input_shape),
                         "relative_error": reference.relative_error(out.numpy(), ref), "compile_s": compile_s}
            fns.append(lambda i, op=op, out=out: op.run(xt, out))
        row["subsampled"]["seconds"], row["strided"]["seconds"] = baselines.interleaved_median_wall(fns, args.repeats)
        times = [row["subsampled"]["seconds"], row["strided"]["seconds"]]
        rows.append(row)
        print(f"{p.name:32s} subsampled {times[0] * 1e3:7.3f} ms ({row['subsampled']['schedule']})  strided "
              f"{times[1] * 1e3:7.3f} ms ({row['strided']['schedule']})", flush=True)
    meta = {"cpu": platform.processor() or platform.machine(), "target": str(target), "tvm": tvm.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": args.repeats,
            "timing": "wall time per call, median, the two ops in turns; no TensorFlow in the process (its "
                      "pool threads keep spinning after a call and slowed TVM calls 1.5-3x in turns with it)"}
    args.json.write_text(json.dumps({**meta, "layers": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
