#!/usr/bin/env python
"""Experiment: where cpu-register-reuse's compile time goes, and what LLVM's optimisation level
costs and saves (issue 15: <= 30 s per layer on the 2-core machine).

For each layer and each `--opt-levels` value (TVM's llvm target attribute "opt-level"; "default"
is the target as compile() uses it), and each `--fractions` of the output channels kept (the
others zeroed: the same layer with less code): the emitted function built by `tvm.compile` (TIR
passes and LLVM IR) and exported to a shared library (LLVM's optimisation and machine code, as
the module cache stores it), then checked against float64 on a NaN-poisoned output and timed
(median of `--repeats` calls). Writes one JSON.

    python benchmarks/experiments/cpu_llvm_opt_level.py --layers resnet50_conv4_1x1_reduce_b1 \\
        --fractions 0.5,1 --opt-levels 0,1,default --json benchmarks/experiments/cpu_llvm_opt_level-cpu-znver5.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tvm  # noqa: E402

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv import reference, targets  # noqa: E402
from tvm_sparseconv.algorithms import by_name  # noqa: E402
from tvm_sparseconv.schedules.cpu_register_reuse import TILES  # noqa: E402
from tvm_sparseconv.workloads import workload_set  # noqa: E402


def measure(problem, fraction: float, opt_level: str, tile: str, repeats: int) -> dict:
    w = problem.dense_kernel()
    kept = w.copy()
    kept[..., int(round(w.shape[-1] * fraction)):] = 0
    kernel = tsc.SparseKernel.from_dense(kept)
    wl = problem.workload(tsc.SparseKernel.from_dense(w))
    base = targets.host_cpu_target()
    target = base if opt_level == "default" else tvm.target.Target(dict(base.export(), **{"opt-level": int(opt_level)}))
    algorithm = by_name("cpu-register-reuse")
    t0 = time.perf_counter()
    func = algorithm.generate(kernel, wl, TILES[tile])
    t1 = time.perf_counter()
    ex = tvm.compile(tvm.IRModule({"sparse_conv2d": func}), target=target)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp, "m.so"))
        ex.export_library(path)
        t3 = time.perf_counter()
        fn = tvm.runtime.load_module(path)["sparse_conv2d"]
        x = np.random.default_rng(0).standard_normal(wl.input_shape).astype(np.float32)
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
        x_dev = tvm.runtime.tensor(x)
        fn(x_dev, out)
        err = reference.relative_error(out.numpy(), reference.conv2d_f64(x, kept, wl))
        times = []
        for _ in range(repeats):
            s = time.perf_counter()
            fn(x_dev, out)
            times.append(time.perf_counter() - s)
    return {"layer": problem.name, "fraction": fraction, "nnz": int(kernel.nnz), "opt_level": opt_level, "tile": tile,
            "emit_s": t1 - t0, "tvm_compile_s": t2 - t1, "export_s": t3 - t2, "total_s": t3 - t0,
            "run_ms": float(np.median(times)) * 1e3, "relative_error": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="resnet50_conv4_1x1_reduce_b1")
    ap.add_argument("--fractions", default="0.5,1", help="shares of the output channels kept, comma-separated")
    ap.add_argument("--opt-levels", default="0,1,default", help="LLVM opt-level values, comma-separated")
    ap.add_argument("--tile", default="l16b4")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = []
    meta = {"script": "benchmarks/experiments/cpu_llvm_opt_level.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu_target": str(targets.host_cpu_target()), "cores": os.cpu_count(), "tvm": tvm.__version__}
    for problem in workload_set(args.layers):
        for fraction in map(float, args.fractions.split(",")):
            for level in args.opt_levels.split(","):
                r = measure(problem, fraction, level, args.tile, args.repeats)
                rows.append(r)
                print(f"{r['layer']:32s} x{fraction:<4} nnz {r['nnz']:6d} opt-level {level:7s}: TIR+IR {r['tvm_compile_s']:5.1f} s, "
                      f"codegen {r['export_s']:5.1f} s, run {r['run_ms']:.3f} ms, error {r['relative_error']:.1e}", flush=True)
                args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
