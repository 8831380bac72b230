"""The TF32 union GEMM ("union-tf32") on ResNet-50 layers against cuDNN TF32 and fp32, side by side in one run.

For each layer (the benchmark's own 90%-pruned kernels): the untuned template and `--samples`
random draws of the design space (what tuning would measure), each checked against float64 on a
NaN-poisoned output before it is timed; cuDNN (PyTorch, channels-last, benchmark mode) in strict
fp32 and TF32, with cuDNN TF32's own error against float64; and this library's fp32 choice
(`compile()`: the layer's record, or the untuned default). Times: CUDA events, median.

    python benchmarks/experiments/union_tf32.py --layers resnet50_conv3_1x1_reduce_b32,resnet50_conv4_3x3_b32 \\
        --json benchmarks/experiments/union_tf32-nvidia-h200.json
    python benchmarks/experiments/union_tf32.py --layers resnet50_conv3_1x1_reduce_b32_g8 --chunks 64,256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tvm

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, baselines, reference, targets, tuning_records
from tvm_sparseconv.algorithms.union_tf32 import CHUNK_1X1, CHUNK_KXK, chunked_format
from tvm_sparseconv.tir_build import compile_tir
from tvm_sparseconv.workloads import workload_set

ALGORITHM = "union-tf32"


def _union_candidates(wl, target, samples: int, rng):
    """(label, schedule) pairs: the untuned template (and with each other unroll of its k-step and
    staging loops), then up to `samples` distinct random draws."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_sparseconv.schedules.cuda_union_tf32 import CUDAUnionTF32
    from tvm_sparseconv.tuning import design_space, untuned_schedules

    mod = tuning_records.workload_module(wl)
    for rule, sch in untuned_schedules([CUDAUnionTF32()], mod, target):
        yield rule.untuned_label(), sch
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=design_space(target, algorithm=ALGORITHM),
                         task_name="main", num_threads=1)
    seen = set()
    for design in ctx.generate_design_space():
        for _ in range(samples * 4):
            if len(seen) >= samples:
                return
            sch = tvm.s_tir.Schedule(mod, seed=int(rng.integers(1 << 30)))
            tvm.s_tir.Trace(design.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if not all(p.apply(sch) for p in ctx.space_generator.postprocs):
                continue
            decisions = tuple(str(v) for v in sch.trace.decisions.values())
            if decisions in seen:
                continue
            seen.add(decisions)
            yield "sample " + " ".join(decisions), sch


def measure_layer(problem, samples: int, repeats: int, rng, chunk: int | None = None) -> dict:
    """One layer's row (`chunk`: the union format with chunks of that many input channels,
    `union_tf32.chunked_format`; None: the algorithm's own)."""
    import torch

    target = targets.cuda_target()
    dev = tvm.cuda(0)
    w = problem.dense_kernel()
    kernel = tsc.SparseKernel.from_dense(w)
    wl = problem.workload(kernel, algorithm=ALGORITHM)
    if chunk:
        wl = wl.with_format(ALGORITHM, **chunked_format(kernel, chunk))
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    ref = reference.conv2d_f64(x, w, wl)
    args = [tvm.runtime.tensor(a, dev) for a in [x, *algorithms.pack_weights(wl, kernel)]]
    kh, kw, cin, _ = wl.kernel_shape
    chunks = -(-cin // wl.chunk)
    # the mma's work relative to the dense layer's (unions padded to 8 per group and chunk)
    row = {"layer": problem.name, "K_per_chunk": wl.ell_width, "chunk": wl.chunk, "chunks": chunks,
           "union_fraction": wl.ell_width * chunks / float(kh * kw * chunks * wl.chunk),
           "density": kernel.density, "candidates": []}
    tol = algorithms.by_name(ALGORITHM).tolerance
    best = None
    for label, sch in _union_candidates(wl, target, samples, rng):
        if sch is None:
            row["candidates"].append({"label": label, "error": "the rule declined the layer"})
            continue
        t0 = time.perf_counter()
        try:
            fn = compile_tir(sch.mod, target)[algorithms.FUNC_NAME]
        except Exception as e:  # noqa: BLE001 - a candidate that does not build is recorded, not fatal
            row["candidates"].append({"label": label, "error": f"build: {str(e).splitlines()[-1][:200]}"})
            continue
        compile_s = time.perf_counter() - t0
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
        fn(*args, out)
        err = reference.relative_error(out.numpy(), ref)
        cand = {"label": label, "relative_error": err, "compile_s": round(compile_s, 2)}
        if err <= tol:
            cand["us"] = baselines.cuda_event_median(lambda i: fn(*args, out), repeats) * 1e6
            if best is None or cand["us"] < best["us"]:
                best = cand
        row["candidates"].append(cand)
    row["union_best_us"] = None if best is None else best["us"]
    row["union_best"] = None if best is None else best["label"]

    for name, tf32 in (("cudnn_fp32", False), ("cudnn_tf32", True)):
        s, y = baselines.cudnn_seconds([x], w, wl, tf32=tf32, repeats=repeats)
        row[f"{name}_us"] = s * 1e6
        row[f"{name}_relative_error"] = reference.relative_error(y, ref)
    torch.backends.cudnn.allow_tf32 = False

    op = tsc.compile(kernel, wl.input_shape, strides=problem.strides, padding=problem.padding, target="cuda")
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
    xd = tvm.runtime.tensor(x, dev)
    op.run(xd, out)
    row["ours_fp32_relative_error"] = reference.relative_error(out.numpy(), ref)
    row["ours_fp32_us"] = baselines.cuda_event_median(lambda i: op.run(xd, out), repeats) * 1e6
    row["ours_fp32_schedule"] = op.schedule_source
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets, comma-separated")
    ap.add_argument("--samples", type=int, default=6, help="random design-space draws per layer")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--chunks", default="",
                    help="input channels per chunk to try, comma-separated (default: the format's own, "
                         f"{CHUNK_1X1} for 1x1 and {CHUNK_KXK} for KxK layers)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "python benchmarks/experiments/union_tf32.py " + " ".join(argv or [])}
    chunks = [int(c) for c in args.chunks.split(",") if c] or [None]
    for problem, chunk in ((p, c) for p in workload_set(args.layers) for c in chunks):
        row = measure_layer(problem, args.samples, args.repeats, rng, chunk)
        rows.append(row)
        best = row["union_best_us"]
        print(f"{row['layer']}: union K={row['K_per_chunk']} x {row['chunks']} chunks ({row['union_fraction']:.2f} of dense) "
              f"best {best if best is None else round(best, 1)} us [{row['union_best']}] | "
              f"cuDNN TF32 {row['cudnn_tf32_us']:.1f} us (err {row['cudnn_tf32_relative_error']:.1e}) | "
              f"cuDNN fp32 {row['cudnn_fp32_us']:.1f} | ours fp32 {row['ours_fp32_us']:.1f}", flush=True)
        for c in row["candidates"]:
            print("   ", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in c.items()}, flush=True)
        if "device" not in env:  # asked once CUDA is initialised (the first layer does it)
            env["device"] = tvm.cuda(0).device_name
        if args.json:  # after every layer, so a run cut short keeps what it measured
            args.json.write_text(json.dumps({"environment": env, "layers": rows}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
