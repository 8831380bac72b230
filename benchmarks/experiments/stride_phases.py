#!/usr/bin/env python
"""Strided layers on this CPU: computed as the stride-1 layer on a copy of their input's stride
phases (`tvm_sparseconv/stride_phases.py`, the default since stop 33) against strided reads (before),
in turns. (tf.nn.conv2d on these layers: `scripts/bench.py`; not in this process, whose timing its
threads would disturb.)

  python benchmarks/experiments/stride_phases.py --json benchmarks/experiments/stride_phases-cpu-znver3.json

Layers: ResNet-50 v1.5's stride-2 3x3 layers and its 7x7 stem at batch 1 (the benchmark sets).
Each op is checked against float64 on a NaN-poisoned output before it is timed; each op's
compile time includes its schedule's choice (a tuning record of what it runs, or the template).
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

LAYERS = ["resnet50_conv3_3x3_s2_b1", "resnet50_conv4_3x3_s2_b1", "resnet50_conv5_3x3_s2_b1",
          "resnet50_conv1_7x7_s2_b1"]


def compare(problems, repeats: int, label: str = "phased") -> dict:
    """Each problem compiled with stride phases (`label` in the rows) and with strided reads,
    both checked against float64 on a NaN-poisoned output, then timed in turns on this CPU; the
    run as written to JSON (also used by `subsampled_1x1.py`, its one-phase case)."""
    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import baselines, reference, targets

    targets.configure_cpu_threads()
    warnings.simplefilter("ignore")  # untuned layers warn once each; the schedule is in the JSON
    target = targets.host_cpu_target()
    rows = []
    for p in problems:
        w = p.dense_kernel()
        kernel = tsc.SparseKernel.from_dense(w)
        ops = {}
        for mode in (label, "strided"):
            tsc.op.SparseConv2D.phase_strided = mode == label
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
        row[label]["seconds"], row["strided"]["seconds"] = baselines.interleaved_median_wall(fns, repeats)
        rows.append(row)
        print(f"{p.name:32s} {label} {row[label]['seconds'] * 1e3:7.3f} ms ({row[label]['schedule']})  strided "
              f"{row['strided']['seconds'] * 1e3:7.3f} ms ({row['strided']['schedule']})", flush=True)
    meta = {"cpu": platform.processor() or platform.machine(), "target": str(target), "tvm": tvm.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": repeats,
            "timing": "wall time per call, median, the two ops in turns; no TensorFlow in the process (its "
                      "pool threads keep spinning after a call and slowed TVM calls 1.5-3x in turns with it)"}
    return {**meta, "layers": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default=",".join(LAYERS), help="problem names, comma-separated")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)

    from tvm_sparseconv.workloads import workload_set

    args.json.write_text(json.dumps(compare(workload_set(args.layers), args.repeats), indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
