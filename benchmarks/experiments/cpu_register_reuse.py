"""Experiment: register reuse on the CPU (the kernel's pattern in the code) against tf.nn.conv2d.

For each layer of the chosen sets (up to --max-nnz nonzeros): the kernel as the benchmarks draw
it, the code of `schedules/cpu_register_reuse.py` compiled by TVM's LLVM backend for this CPU
(compile time measured), checked against float64 on a fresh input with a NaN-poisoned output,
then timed in turns (one call of each per round, median) with the library's current CPU choice
(its record) and `tf.nn.conv2d` as `scripts/bench.py` times it. Writes one JSON.

    python benchmarks/experiments/cpu_register_reuse.py --sets resnet50_network_s90_b1 \\
        --json benchmarks/experiments/cpu_register_reuse-cpu-znver3.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="resnet50_network_s90_b1")
    ap.add_argument("--max-nnz", type=int, default=30_000, help="skip layers with more nonzeros (compile time)")
    ap.add_argument("--lanes", type=int, default=8, help="vector width in floats (8: AVX2, 16: AVX-512)")
    ap.add_argument("--blocks", default="1,4", help="pixel blocks per parallel iteration to try (comma-separated)")
    ap.add_argument("--halo", choices=["no", "also", "only"], default="no",
                    help="halo tiles too, or only (keys '<blocks>h'; layers of stride 1 along the width)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", required=True)
    ap.add_argument("--table", action="store_true", help="print the markdown table of the run in --json and stop")
    ap.add_argument("--record", type=Path, default=None, metavar="FOLDER",
                    help="instead: time each layer the algorithm takes (its code-size budget) with each of "
                         "--tiles beside the library's scheduled choice, without TensorFlow in the process "
                         "(as the MetaSchedule records were timed), and write the best tile of each as "
                         "cpu-register-reuse records into FOLDER (e.g. tuning_logs/cpu-znver3; other shapes kept)")
    ap.add_argument("--tiles", default="l8b1,l8b4", help="with --record: tiles to try (schedules/cpu_register_reuse.py)")
    args = ap.parse_args(argv)
    if args.record is not None:
        return record(args)
    if args.table:
        print(markdown_table(json.loads(Path(args.json).read_text())))
        return 0

    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import baselines, reference, targets
    from tvm_sparseconv.schedules.cpu_register_reuse import emit
    from tvm_sparseconv.workloads import workload_set

    target = targets.host_cpu_target()
    rows = []
    meta = {"cpu": platform.processor() or platform.machine(), "target": str(target), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "tvm": tvm.__version__, "lanes": args.lanes, "repeats": args.repeats,
            "timing": "wall time per call, median, the three contenders in turns (and each alone)"}
    for p in workload_set(args.sets):
        kernel = p.sparse_kernel()
        if kernel.nnz > args.max_nnz:
            continue
        wl = p.workload(kernel)
        w = p.dense_kernel().astype(np.float32)
        variants = {}
        halos = {"no": (False,), "also": (False, True), "only": (True,)}[args.halo if wl.strides[1] == 1 else "no"]
        for blocks in map(int, args.blocks.split(",")):
            for halo in halos:
                t0 = time.perf_counter()
                func = emit(w, wl.input_shape, wl.output_hw, wl.strides, wl.pads, dilations=wl.dilations,
                            lanes=args.lanes, blocks=blocks, halo=halo)
                ex = tvm.compile(tvm.IRModule({"sparse_conv2d": func}), target=target)
                variants[f"{blocks}{'h' if halo else ''}"] = (ex["sparse_conv2d"], time.perf_counter() - t0)

        rng = np.random.default_rng(1)
        n_rot = baselines.rotation_count(int(np.prod(wl.input_shape)) * 4)
        xs = [rng.standard_normal(wl.input_shape).astype(np.float32) for _ in range(n_rot)]
        x_t = [tvm.runtime.tensor(x) for x in xs]
        ref = reference.conv2d_f64(xs[0], w, wl)
        outs, errs = {}, {}
        for blocks, (f, _) in variants.items():
            outs[blocks] = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
            f(x_t[0], outs[blocks])
            errs[blocks] = reference.relative_error(outs[blocks].numpy(), ref)

        op = tsc.compile(kernel, wl.input_shape, strides=wl.strides, padding=p.padding, dilations=wl.dilations,
                         target=target)
        out_lib = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
        op.run(x_t[0], out_lib)
        lib_err = reference.relative_error(out_lib.numpy(), ref)
        _, tf_out = baselines.tf_conv2d_seconds(xs[:1], w, wl, 1)
        tf_err = reference.relative_error(np.asarray(tf_out), ref)

        import tensorflow as tf

        (pt, pb), (pl, pr) = wl.pads
        xts, wt = [tf.constant(x) for x in xs], tf.constant(w)
        tf_run = lambda i: tf.nn.conv2d(xts[i % n_rot], wt, wl.strides, [[0, 0], [pt, pb], [pl, pr], [0, 0]],  # noqa: E731
                                        dilations=wl.dilations).numpy()
        fns = [lambda i, f=f, o=outs[bl]: f(x_t[i % n_rot], o) for bl, (f, _) in variants.items()]
        *times, lib, tfs = baselines.interleaved_median_wall(
            fns + [lambda i: op.run(x_t[i % n_rot], out_lib), tf_run], args.repeats)
        per = {str(bl): {"seconds": s, "relative_error": errs[bl], "compile_s": variants[bl][1]}
               for bl, s in zip(variants, times)}
        best = min((bl for bl in per if per[bl]["relative_error"] < 1e-5), key=lambda bl: per[bl]["seconds"], default=None)
        ours = per[best]["seconds"] if best else float("nan")
        err = per[best]["relative_error"] if best else max(errs.values())
        compile_s = per[best]["compile_s"] if best else float("nan")
        row = {"layer": p.name, "input_shape": list(wl.input_shape), "kernel_shape": list(wl.kernel_shape),
               "strides": list(wl.strides), "nnz": int(kernel.nnz), "blocks": per, "best_blocks": best,
               "compile_s": compile_s, "relative_error": err,
               "library": {"schedule": op.schedule_source, "algorithm": op.algorithm, "relative_error": lib_err,
                           "seconds": lib},
               "tf": {"relative_error": tf_err, "seconds": tfs}, "seconds": ours}
        rows.append(row)
        # Each alone too: in turns, TensorFlow's worker threads still spin after its op and slow the
        # TVM call that follows (and TVM's TensorFlow's); a graph of only one of them sees the alone time.
        chosen = best if best else min(variants)
        row["alone"] = {"seconds": baselines.median_wall(lambda i: variants[chosen][0](x_t[i % n_rot], outs[chosen]), args.repeats),
                        "library": baselines.median_wall(lambda i: op.run(x_t[i % n_rot], out_lib), args.repeats),
                        "tf": baselines.median_wall(tf_run, args.repeats)}
        variants_ms = ", ".join(f"{k}: {v['seconds'] * 1e3:.3f}" for k, v in per.items())
        print(f"{p.name:34s} nnz {kernel.nnz:6d} compile {compile_s:5.1f} s err {err:.1e}  ours {ours * 1e3:7.3f} ms "
              f"(blocks {best}; {variants_ms})  library {lib * 1e3:7.3f} ({op.algorithm})  tf {tfs * 1e3:7.3f}  "
              f"vs tf {tfs / ours:5.2f}x; alone ours {row['alone']['seconds'] * 1e3:.3f} library "
              f"{row['alone']['library'] * 1e3:.3f} tf {row['alone']['tf'] * 1e3:.3f}", flush=True)
        Path(args.json).write_text(json.dumps({**meta, "layers": rows}, indent=1))
    return 0


def record(args) -> int:
    """--record: per layer in the algorithm's budget, each tile and the library's scheduled choice
    timed in turns (wall time per call, median, no TensorFlow imported), each result checked against
    float64 first; the best tile becomes the layer shape's record; the run goes to --json."""
    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import algorithms, baselines, build, reference, targets, tile_records
    from tvm_sparseconv.workloads import workload_set

    target = targets.host_cpu_target()
    algorithm = algorithms.by_name("cpu-register-reuse")
    rows, records = [], []
    meta = {"cpu": platform.processor() or platform.machine(), "target": str(target),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "tvm": tvm.__version__, "repeats": args.repeats,
            "timing": "wall time per call, median, in turns, no TensorFlow in the process"}
    for p in workload_set(args.sets):
        kernel = p.sparse_kernel()
        wl = algorithms.workload_for(kernel, p.workload(kernel), algorithm.name)
        if not algorithm.applies(wl, "llvm"):
            continue
        rng = np.random.default_rng(2)
        n_rot = baselines.rotation_count(int(np.prod(wl.input_shape)) * 4)
        xs = [tvm.runtime.tensor(rng.standard_normal(wl.input_shape).astype(np.float32)) for _ in range(n_rot)]
        ref = reference.conv2d_f64(xs[0].numpy(), p.dense_kernel(), wl)
        fns, row = [], {"layer": p.name, "nnz": int(kernel.nnz), "tiles": {}}
        for name in args.tiles.split(","):
            t0 = time.perf_counter()
            f = algorithm.build(kernel, wl, algorithm.tiles()[name], target)["sparse_conv2d"]
            compile_s = time.perf_counter() - t0
            out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
            f(xs[0], out)
            row["tiles"][name] = {"compile_s": compile_s, "relative_error": reference.relative_error(out.numpy(), ref)}
            fns.append(lambda i, f=f, out=out: f(xs[i % n_rot], out))
        scheduled = build.choose_schedule(algorithms.workloads_for(kernel, p.workload(kernel), "llvm"), target)[0].algorithm
        op = tsc.compile(kernel, wl.input_shape, strides=wl.strides, padding=p.padding, dilations=wl.dilations,
                         target=target, algorithm=scheduled)
        out_lib = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
        op.run(xs[0], out_lib)
        row["library"] = {"algorithm": op.algorithm, "schedule": op.schedule_source,
                          "relative_error": reference.relative_error(out_lib.numpy(), ref)}
        *times, lib = baselines.interleaved_median_wall(fns + [lambda i: op.run(xs[i % n_rot], out_lib)], args.repeats)
        row["library"]["seconds"] = lib
        for name, secs in zip(row["tiles"], times):
            row["tiles"][name]["seconds"] = secs
        ok = {n: t for n, t in row["tiles"].items() if t["relative_error"] < algorithm.tolerance}
        best = min(ok, key=lambda n: ok[n]["seconds"], default=None)
        row["best_tile"] = best
        if best is not None:
            records.append({"shape": tile_records.shape_key(wl), "tile": best, "seconds": ok[best]["seconds"],
                            "nonzeros": int(kernel.nnz), "layer": p.name})
        tiles_ms = ", ".join(f"{n} {t['seconds'] * 1e3:.3f} ({t['compile_s']:.1f} s)" for n, t in row["tiles"].items())
        print(f"{p.name:34s} nnz {kernel.nnz:6d}  {tiles_ms}  library {lib * 1e3:.3f} ({op.algorithm})", flush=True)
        rows.append(row)
        Path(args.json).write_text(json.dumps({**meta, "layers": rows}, indent=1))
    from tvm_sparseconv.tuning_records import ensure_meta

    ensure_meta(args.record, target, meta["cpu"])  # so that other CPUs of its ISA family find these records
    path = tile_records.merge(args.record, algorithm.name, str(args.record.name), args.json, records)
    print(f"wrote {path}")
    return 0


def markdown_table(run: dict) -> str:
    lines = [f"{run['cpu']}, {run['target']}, {run['date']} ({run['timing']}, {run['repeats']} rounds):", "",
             "| layer | nonzeros | compile s | register-reuse ms (blocks) | library ms (algorithm) | tf.nn.conv2d ms | vs library | vs TF "
             "| alone: ours / library / TF ms | alone vs TF |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in run["layers"]:
        ours, lib, tfs = r["seconds"], r["library"]["seconds"], r["tf"]["seconds"]
        lines.append(f"| {r['layer'].removeprefix('resnet50_')} | {r['nnz']} | {r['compile_s']:.1f} | {ours * 1e3:.3f} ({r['best_blocks']}) "
                     f"| {lib * 1e3:.3f} ({r['library']['algorithm']}) | {tfs * 1e3:.3f} | {lib / ours:.2f} | {tfs / ours:.2f} "
                     + (f"| {a['seconds'] * 1e3:.3f} / {a['library'] * 1e3:.3f} / {a['tf'] * 1e3:.3f} | {a['tf'] / a['seconds']:.2f} |"
                        if (a := r.get("alone")) else "| - | - |"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
