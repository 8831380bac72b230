"""union-tf32-async (the staging copy as `cp.async`, overlapped with the mma) against union-tf32's synchronous copy.

union-tf32 rounds the input to TF32 as it stages it, so the copy is a computation and each
chunk's copy (global load, shared store, barrier) waits before that chunk's mma. union-tf32-async
rounds at the fragment instead, so the staging is a plain copy (zero for padding), and TVM's
software pipeline on the chunk loop (stages [copy 0, mma 1], the copy an async stage) lowers it
to predicated `cp.async` into a double-buffered tile (each half union-tf32's shared memory, so a
KxK block may cover fewer rows): the copy of chunk c+1 is in flight while chunk c's mma run. The
price: the rounding moves into the gather, 2 integer instructions an A element (8 an mma).

For each layer: both algorithms' untuned templates (each with the k steps unrolled or not), checked
against float64 on a NaN-poisoned output, then timed (CUDA events, median), beside cuDNN TF32.
Without a GPU, `--build-only` builds them and counts what the CUDA holds. Other design choices
of the two templates, as options: 1x1 layers' chunk width (`--chunks`) and async pipeline depth
(`--stages`), the most groups a block (`--group-caps`), and the same kernels with and without the
skipping of k steps past each warp's unions (`--skip-ab`: the taps without their step counts,
`union_tf32.skipped_steps_code`).

    python benchmarks/experiments/union_tf32_async_copy.py --layers resnet50_conv4_3x3_b32_g8,resnet50_conv3_3x3_b32_g8 \\
        --json benchmarks/experiments/union_tf32_async_copy-nvidia-h100.json
    python benchmarks/experiments/union_tf32_async_copy.py --layers resnet50_conv4_3x3_b32_g8 --build-only
    python benchmarks/experiments/union_tf32_async_copy.py --layers resnet50_conv4_1x1_expand_b32_g8 --chunks 64,128
    python benchmarks/experiments/union_tf32_async_copy.py --layers resnet50_conv5_1x1_reduce_b32_g8 --stages 3,4 \
        --chunks 64,128 --group-caps 8,32 --skip-ab

(The first run, union_tf32_async_copy-nvidia-h100.json, was of the experiment before the
algorithm existed: the async copy in union-tf32's own tiles, which exceeded 48 KB
double-buffered on conv2 and conv3 3x3.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import tvm

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, targets, tuning_records
from tvm_sparseconv.algorithms import union_tf32
from tvm_sparseconv.schedules.cuda_union_tf32 import CUDAUnionTF32
from tvm_sparseconv.schedules.cuda_union_tf32_async import CUDAUnionTF32Async
from tvm_sparseconv.tir_build import compile_tir, without_step_skipping
from tvm_sparseconv.workloads import workload_set

ALGORITHM, ASYNC = "union-tf32", "union-tf32-async"


def built(mod: tvm.IRModule, target) -> tuple:
    """(built module, its CUDA source, compile seconds) of a scheduled `mod`."""
    t0 = time.perf_counter()
    lib = compile_tir(mod, target)
    return lib, next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source(), time.perf_counter() - t0


def tuned_candidates(kernel, layer, target, records: Path):
    """(label, workload, built module, CUDA source, compile seconds, scheduled module) of the
    layer's union records in the tuning-log folder `records`, each algorithm's that has one."""
    for alg in (ALGORITHM, ASYNC):
        wl = algorithms.workload_for(kernel, layer, alg)
        tuned = tuning_records.find_tuned_schedule(wl, target, records)
        if tuned is not None:
            yield f"tuned record ({alg}, {records.name})", wl, *built(tuned.schedule.mod, target), tuned.schedule.mod


def candidates(kernel, layer, target, chunks=(), stages=(), group_caps=()):
    """(label, workload, built module, CUDA source, compile seconds): union-tf32's untuned template
    (synchronous copy) and union-tf32-async's (rounded at the fragment, its copy pipelined as
    cp.async into a double-buffered tile of half the shared memory), each with its k steps
    unrolled (512) or not; for a 1x1 layer also at each of `chunks` input channels a chunk (a
    chunk of 256, the default, is the whole input of a layer of Cin <= 256: nothing to overlap),
    and the async copy `stages` deep (chunks' tiles held at once, each in 1/stages of the memory);
    at the default chunk also each of `group_caps` groups a block (both copies)."""
    pointwise = union_tf32.is_pointwise(layer.kernel_shape)
    widths = [None] + ([c for c in chunks if c < layer.kernel_shape[2]] if pointwise else [])
    for chunk in widths:
        yield from _candidates_at(kernel, layer, target, chunk, stages if pointwise else (), () if chunk else group_caps)


def _candidates_at(kernel, layer, target, chunk, stages=(), group_caps=()):
    workloads = {alg: algorithms.workload_for(kernel, layer, alg) for alg in (ALGORITHM, ASYNC)}
    if chunk:
        workloads = {alg: wl.with_format(alg, **union_tf32.chunked_format(kernel, chunk)) for alg, wl in workloads.items()}
    at = f", chunk {chunk}" if chunk else ""
    for k_unroll in (0, 512):
        rules = [(f"sync copy, k unroll {k_unroll}{at}", CUDAUnionTF32()),
                 (f"cp.async copy, k unroll {k_unroll}{at}", CUDAUnionTF32Async())]
        for depth in stages:
            rules.append((f"cp.async copy {depth} stages, k unroll {k_unroll}{at}", CUDAUnionTF32Async()))
            rules[-1][1].stages = depth
        for cap in group_caps:
            for label, rule in ((f"sync copy, {cap} groups a block, k unroll {k_unroll}{at}", CUDAUnionTF32()),
                                (f"cp.async copy, {cap} groups a block, k unroll {k_unroll}{at}", CUDAUnionTF32Async())):
                rule.group_cap = cap
                rules.append((label, rule))
        for label, rule in rules:
            rule.untuned_k_unroll = k_unroll
            wl = workloads[rule.algorithm]
            sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
            if sch is None:
                yield label, wl, None, "the rule declines the layer", 0.0
                continue
            try:
                yield label, wl, *built(sch.mod, target), sch.mod
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                yield label, wl, None, f"build: {str(e).splitlines()[-1][:200]}", 0.0, None


def step_counts(kernel, wl) -> dict:
    """k steps a (group, chunk) has (K/8) against those its union takes (the rest skippable:
    `union_tf32.skipped_steps_code`), on average, and the most of each 2 and 4 consecutive groups
    (a warp runs its groups' most)."""
    unions = union_tf32.group_unions(kernel, wl.chunk, union_tf32.tap_code(wl))
    own = np.array([[union_tf32.own_steps(u) for u in per_chunk] for per_chunk in unions])
    facts = {"k_steps": wl.ell_width // union_tf32.K_STEP, "own_mean": round(float(own.mean()), 3)}
    for per_warp in (2, 4):
        if own.shape[0] % per_warp == 0:
            facts[f"most_of_{per_warp}_groups_mean"] = round(float(own.reshape(-1, per_warp, own.shape[1]).max(1).mean()), 3)
    return facts


def source_facts(src: str) -> dict:
    """What the CUDA holds: cp.async calls, barriers, the staged tiles' words."""
    shared = re.findall(r"__shared__ alignas\(\d+\) float x_tf32_shared_ptr\[(\d+)\]", src)
    return {"cp_async_calls": len(re.findall(r"ptx_cp_async\w*\(x_tf32", src)),
            "syncthreads": src.count("__syncthreads"), "staged_words": int(shared[0]) if shared else None}


def measure_layer(problem, repeats: int, build_only: bool, rng, chunks=(), stages=(), group_caps=(),
                  skip_ab: bool = False, tuned: Path | None = None, tuned_only: bool = False) -> dict:
    from tvm_sparseconv import baselines, reference

    target = targets.cuda_target() if not build_only else targets.cuda_target_for_arch("sm_90")
    w = problem.dense_kernel()
    kernel = tsc.SparseKernel.from_dense(w)
    layer = problem.workload(kernel, algorithm=ALGORITHM)
    row = {"layer": problem.name, "candidates": []}
    row["k_steps"] = step_counts(kernel, algorithms.workload_for(kernel, layer, ASYNC))
    if not build_only:
        dev = tvm.cuda(0)
        x = rng.standard_normal(layer.input_shape, dtype=np.float32)
        ref = reference.conv2d_f64(x, w, layer)
        x_dev = tvm.runtime.tensor(x, dev)
        weights = {}  # per workload: its packed arrays on the device (and with --skip-ab, the taps without counts)
    found = () if tuned_only else candidates(kernel, layer, target, chunks, stages, group_caps)
    if tuned is not None:
        found = itertools.chain(tuned_candidates(kernel, layer, target, tuned), found)
    for label, wl, lib, src, compile_s, mod in found:
        if lib is None:
            row["candidates"].append({"label": label, "error": src})
            continue
        cand = {"label": label, "compile_s": round(compile_s, 2), **source_facts(src)}
        if not union_tf32.is_pointwise(wl.kernel_shape):
            cand["block_rows_tiles"] = list(union_tf32.block_tiles(wl))
        if not build_only:
            fn = lib[algorithms.FUNC_NAME]
            if wl not in weights:
                packed = algorithms.pack_weights(wl, kernel)
                weights[wl] = {"": [tvm.runtime.tensor(a, dev) for a in packed]}
                if skip_ab:  # the same weights, the taps without step counts: the kernel runs all K/8 steps
                    taps = packed[1].copy()
                    taps[..., -1] = np.maximum(taps[..., -1], 0)  # a step count becomes tap 0 (weight 0 there)
                    weights[wl]["_all_steps"] = [weights[wl][""][0], tvm.runtime.tensor(taps, dev)]
            runs = [(suffix, fn, arrays) for suffix, arrays in weights[wl].items()]
            if skip_ab:  # and the same schedule built without the skipping (the kernel before stop 46)
                plain = compile_tir(without_step_skipping(mod), target)
                runs.append(("_unguarded", plain[algorithms.FUNC_NAME], weights[wl]["_all_steps"]))
            for suffix, fn, arrays in runs:
                args = [x_dev, *arrays]
                out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
                fn(*args, out)
                cand["relative_error" + suffix] = reference.relative_error(out.numpy(), ref)
                if cand["relative_error" + suffix] <= algorithms.by_name(wl.algorithm).tolerance:
                    cand["us" + suffix] = baselines.cuda_event_median(lambda i: fn(*args, out), repeats) * 1e6
        row["candidates"].append(cand)
    if not build_only:
        s, y = baselines.cudnn_seconds([x], w, layer, tf32=True, repeats=repeats)
        row["cudnn_tf32_us"], row["cudnn_tf32_relative_error"] = s * 1e6, reference.relative_error(y, ref)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets, comma-separated")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--build-only", action="store_true", help="build and count (no GPU needed), do not run")
    ap.add_argument("--chunks", default="", help="1x1 layers: also these input channels a chunk, comma-separated "
                    "(e.g. 64,128: several chunks for the async copy to overlap)")
    ap.add_argument("--stages", default="", help="1x1 layers: also the async copy this many chunks deep, comma-"
                    "separated (e.g. 3,4: each staged tile in a third, a quarter of the shared memory)")
    ap.add_argument("--group-caps", default="", help="also these most groups of 8 channels a block, comma-separated "
                    "(e.g. 8,32,64; the templates' is 16): fewer re-reads of the input against fewer blocks")
    ap.add_argument("--skip-ab", action="store_true", help="also time each kernel running all K/8 k steps (its taps "
                    "without the step counts that let the build skip those past each union)")
    ap.add_argument("--tuned", type=Path, help="also each layer's union records in this tuning-log folder "
                    "(e.g. tuning_logs/nvidia-h100), first")
    ap.add_argument("--tuned-only", action="store_true", help="with --tuned: the records only, not the templates")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "python benchmarks/experiments/union_tf32_async_copy.py " + " ".join(argv or [])}
    rows = []
    for problem in workload_set(args.layers):
        row = measure_layer(problem, args.repeats, args.build_only, rng, [int(c) for c in args.chunks.split(",") if c],
                            [int(d) for d in args.stages.split(",") if d], [int(g) for g in args.group_caps.split(",") if g],
                            args.skip_ab, args.tuned, args.tuned_only)
        rows.append(row)
        if "device" not in env and not args.build_only:
            env["device"] = tvm.cuda(0).device_name
        tf32 = f" | cuDNN TF32 {row['cudnn_tf32_us']:.1f} us" if "cudnn_tf32_us" in row else ""
        print(f"{row['layer']}{tf32} | {row['k_steps']}", flush=True)
        for c in row["candidates"]:
            print("   ", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in c.items()}, flush=True)
        if args.json:  # after every layer, so a run cut short keeps what it measured
            args.json.write_text(json.dumps({"environment": env, "layers": rows}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
