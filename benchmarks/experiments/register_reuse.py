"""Experiment: the pattern compiled into the code ("register-reuse") against cuDNN and our records.

For each layer of the chosen sets: the kernel as the benchmarks draw it, then for each tile
configuration the generated kernel (`schedules/cuda_register_reuse.py`, LLVM NVPTX), checked
against float64 on a fresh input with a NaN-poisoned output, then timed in device time side by
side with the library's choice among its scheduled algorithms (their tuning records) and cuDNN
fp32 / TF32.
Compiles run in parallel worker processes (one per CPU). Writes one JSON.

    python benchmarks/experiments/register_reuse.py --sets resnet50_1x1_b32,resnet50_1x1_b1 \
        --json $OUT/register_reuse.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schedules.cuda_register_reuse import EMITTER_VERSION, TILES  # noqa: E402
from tvm_sparseconv.algorithms.register_reuse import LINK_MODES  # noqa: E402



def _compile(args) -> dict:
    """Worker: build one (layer, tile) as compile() does (`RegisterReuse.build`: long code in
    pieces compiled in parallel, joined into one kernel), or as `parts` kernels launched in turn;
    export the module."""
    name, tile_name, path, parts, link, ptxas_opt, fma_code = args
    from schedules.cuda_register_reuse import TILES
    from tvm_sparseconv.algorithms import by_name
    from tvm_sparseconv.nvptx_build import compile_nvptx
    from tvm_sparseconv.workloads import workload_set

    problem = workload_set(name)[0]
    kernel = problem.sparse_kernel()
    wl = problem.workload(kernel)
    tile, algorithm = TILES[tile_name], by_name("register-reuse")
    t0 = time.perf_counter()
    row = {"layer": name, "tile": tile_name, "parts": parts, "link": link, "fma_code": fma_code}
    try:
        if parts:
            ex = compile_nvptx(lambda llvm: algorithm.generate(kernel, wl, tile, llvm=llvm, parts=parts, fma_code=fma_code),
                               **algorithm.ptxas_options(tile, ptxas_opt))
        else:
            ex = algorithm.build(kernel, wl, tile, link=link, ptxas_opt=ptxas_opt, fma_code=fma_code)
    except Exception as e:  # noqa: BLE001 - one tile that does not build (e.g. too much shared memory) is a result
        return {**row, "error": f"{type(e).__name__}: {str(e)[-500:]}"}
    compile_s = time.perf_counter() - t0
    ex.export_library(path)
    return {**row, "compile_s": compile_s, "path": path}


def best_tile(row: dict, tolerance: float = 1e-5, admitted=None) -> tuple[str | None, dict | None]:
    """The fastest tile of a layer among those within `tolerance` of float64 (and `admitted(tile
    name)`, where given)."""
    ok = {t: v for t, v in row["tiles"].items() if v.get("relative_error", np.inf) < tolerance
          and (admitted is None or admitted(t))}
    if not ok:
        return None, None
    name = min(ok, key=lambda t: ok[t]["seconds"])
    return name, ok[name]


def markdown_table(run: dict) -> str:
    """Per layer: the library's choice, the best tile, cuDNN fp32 and TF32 (us), and the ratios."""
    lines = [f"{run['device']}, {run['date']} ({run['timing']}, median of {run['repeats']}):", "",
             "| layer | nonzeros | library us (algorithm) | register-reuse us (tile) | cuDNN fp32 us | cuDNN TF32 us "
             "| vs library | vs fp32 | vs TF32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in run["layers"]:
        lib, fp32, tf32 = r["library"]["seconds"], r["cudnn_fp32"], r["cudnn_tf32"]
        name, best = best_tile(r)
        skipped = f"> {run['max_fmas']} FMAs" if "max_fmas" in run else "over the code-size budget"
        ours = f"{best['seconds'] * 1e6:.1f} ({name})" if best else f"not compiled ({skipped})"
        ratios = [f"{ref / best['seconds']:.2f}" if best else "-" for ref in (lib, fp32, tf32)]
        lines.append(f"| {r['layer'].removeprefix('resnet50_')} | {r['nnz']} | {lib * 1e6:.1f} ({r['library']['algorithm']}) "
                     f"| {ours} | {fp32 * 1e6:.1f} | {tf32 * 1e6:.1f} | {' | '.join(ratios)} |")
    return "\n".join(lines)


def write_records(run: dict, folder: Path, source: str) -> Path:
    """The best tile per layer of `run` as register-reuse records of its device in `folder`
    (replacing the records of the same shapes, keeping the others). A record whose tile the run
    did not measure and that is faster than the run's best is kept (runs of a few tiles) if it was
    measured with the same code (`tile_records.keeps`); a best tile slower than the library's
    scheduled choice in the same run is not recorded."""
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.algorithms import by_name
    from tvm_sparseconv.workloads import workload_set

    algorithm = by_name("register-reuse")
    records = []
    for r in run["layers"]:
        problem = workload_set(r["layer"])[0]
        wl = problem.workload()
        # a run with --ignore-budget measures tiles that compile() would not build: never recorded
        ranked = problem.workload(problem.sparse_kernel())
        name, best = best_tile(r, admitted=lambda t: t in TILES and algorithm.fits(ranked, TILES[t]))
        if best is None:
            continue
        lib = r["library"]
        if lib["algorithm"] != "register-reuse" and lib["seconds"] < best["seconds"]:
            # compile() weighs a record against the scheduled algorithms' tuning records, timed by
            # another run: one slower than them in the same run would be chosen where it loses
            print(f"{r['layer']}: not recorded: {name} ({best['seconds'] * 1e6:.1f} us) is slower than "
                  f"{lib['algorithm']} ({lib['seconds'] * 1e6:.1f} us) in the same run")
            continue
        new = {"layer": r["layer"], "shape": tile_records.shape_key(wl), "tile": name,
               "seconds": best["seconds"], "nonzeros": r["nnz"], "library_seconds": r["library"]["seconds"],
               "cudnn_tf32_seconds": r["cudnn_tf32"], "emitter_version": run.get("emitter_version")}
        old = tile_records.find(folder, "register-reuse", wl, r["nnz"])
        if tile_records.keeps(old, new, measured=r["tiles"]):
            print(f"{r['layer']}: kept {old['tile']} ({old['seconds'] * 1e6:.1f} us, not measured in this run) "
                  f"over {name} ({best['seconds'] * 1e6:.1f} us)")
            continue
        records.append(new)
    return tile_records.merge(folder, "register-reuse", run["device"], str(source), records)


def bench_records(bench: dict, problems: list[str]) -> list[dict]:
    """Records from a `scripts/bench.py` run (JSON with "points") for the named `problems`: the
    register-reuse tile that `compile()` built there (each point checked against float64 in that
    run) with its time and nonzeros. For a shape's record at another density than its tile runs'."""
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.workloads import workload_set

    records = []
    for name in problems:
        points = [q for q in bench["points"] if q["problem"] == name]
        if not points:
            sys.exit(f"no point {name!r} in the bench run")
        q = points[0]
        prefix = "tuned:register-reuse "
        if not q["schedule"].startswith(prefix) or not q["correct"]:
            sys.exit(f"{name}: ran {q['schedule']!r} (correct: {q['correct']}), not a register-reuse tile")
        records.append({"layer": name, "shape": tile_records.shape_key(workload_set(name)[0].workload()),
                        "tile": q["schedule"][len(prefix):].split("@")[0], "seconds": q["seconds"]["sparse"],
                        "nonzeros": q["nnz"], "cudnn_tf32_seconds": q["seconds"].get("cudnn_tf32")})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="resnet50_1x1_b32,resnet50_1x1_b1")
    ap.add_argument("--tiles", default=",".join(TILES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--compile-only", action="store_true", help="stop after compiling (no GPU needed)")
    ap.add_argument("--ignore-budget", action="store_true",
                    help="also compile layers over the algorithm's code-size budget (what the budget costs)")
    ap.add_argument("--parts", type=int, default=None,
                    help="kernels per layer (default: the emitter's split by FMAs, parts_for)")
    ap.add_argument("--link", default="auto", choices=LINK_MODES,
                    help="long code's pieces: as compile() puts them together (auto: joined up to "
                         "MAX_JOINED_FMAS possible, else linked), or forced (linked-capped: with a register "
                         "cap on the pieces compiled apart)")
    ap.add_argument("--ptxas-opt", type=int, default=None, choices=range(4),
                    help="ptxas -O level (default: the library's, nvptx_build.PTXAS_OPT_LEVEL)")
    ap.add_argument("--fma-code", default="ptx", choices=("ptx", "tir"),
                    help="how the FMAs reach the PTX: spliced as text (compile()'s way) or compiled by TVM + LLVM")
    ap.add_argument("--json", required=True, help="where to write the run (or, with --table, which run to read)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the run in --json and stop")
    ap.add_argument("--record", type=Path, default=None, metavar="FOLDER",
                    help="write the best tile of each layer of the run in --json as register-reuse records "
                         "into FOLDER (e.g. tuning_logs/nvidia-h200; other shapes' records are kept) and stop; "
                         "--json may also be a scripts/bench.py run, with --problems")
    ap.add_argument("--problems", default="",
                    help="with --record and a bench.py run: the problems whose register-reuse tile to record")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.json).read_text())))
        return 0
    if args.record is not None:
        run = json.loads(Path(args.json).read_text())
        if "points" in run:
            from tvm_sparseconv import tile_records

            records = bench_records(run, [p for p in args.problems.split(",") if p])
            path = tile_records.merge(args.record, "register-reuse", run["device"], args.json, records)
            print(f"wrote {path}")
            return 0
        if run.get("link", "auto") != "auto" or run.get("ptxas_opt") is not None or run.get("fma_code", "tir") != "ptx":
            sys.exit(f"{args.json} was built with a forced --link, --ptxas-opt or --fma-code: its times are not compile()'s")
        path = write_records(run, args.record, args.json)
        print(f"wrote {path}")
        return 0

    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import baselines, build, reference
    from tvm_sparseconv.targets import resolve_target
    from tvm_sparseconv.workloads import workload_set

    problems = workload_set(args.sets)
    tiles = args.tiles.split(",")
    tmp = Path(tempfile.mkdtemp())
    jobs, layers = [], {}
    for p in problems:
        kernel = p.sparse_kernel()
        wl = p.workload(kernel)
        w = p.dense_kernel().astype(np.float32)
        layers[p.name] = (p, kernel, wl, w)
        algorithm = tsc.algorithms.by_name("register-reuse")
        if not args.ignore_budget and not algorithm.applies(wl, "cuda"):
            continue  # over its code-size budget
        for t in tiles:
            if not args.ignore_budget and not algorithm.fits(wl, TILES[t]):
                continue  # pieces too long for the budget with this tile
            jobs.append((p.name, t, str(tmp / f"{p.name}-{t}.so"), args.parts, args.link, args.ptxas_opt, args.fma_code))
    if args.workers > 1:  # each build's own child processes (long code in pieces): share the CPUs
        os.environ.setdefault("TVM_SPARSECONV_COMPILE_WORKERS", str(max(1, (os.cpu_count() or 1) // args.workers)))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        built = list(pool.map(_compile, jobs))
    print(f"compiled {len(built)} kernels in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.compile_only:
        Path(args.json).write_text(json.dumps({"compiled": built}, indent=1))
        return 0

    import torch

    dev = tvm.cuda(0)
    target = resolve_target("cuda")
    rows = []
    meta = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "tvm": tvm.__version__, "torch": torch.__version__, "tiles": {t: TILES[t].as_dict() for t in tiles},
            "repeats": args.repeats, "timing": "device time (cuda_event_median)", "ignore_budget": args.ignore_budget,
            "parts": args.parts, "link": args.link, "ptxas_opt": args.ptxas_opt, "fma_code": args.fma_code,
            "emitter_version": EMITTER_VERSION}
    for name, (p, kernel, wl, w) in layers.items():
        rng = np.random.default_rng(1)
        n_rot = baselines.rotation_count(int(np.prod(wl.input_shape)) * 4)
        xs = [rng.standard_normal(wl.input_shape).astype(np.float32) for _ in range(n_rot)]
        ref = reference.conv2d_f64(xs[0], p.dense_kernel(), wl)
        x_dev = [tvm.runtime.tensor(x, dev) for x in xs]
        row = {"layer": name, "input_shape": list(wl.input_shape), "kernel_shape": list(wl.kernel_shape),
               "cout": int(w.shape[-1]), "nnz": int(kernel.nnz),
               "useful_flops": 2 * int(kernel.nnz) * int(np.prod(wl.output_shape[:3])), "tiles": {}}

        def timed(fn_run, out):
            out.copyfrom(np.full(wl.output_shape, np.nan, np.float32))
            fn_run(x_dev[0], out)
            dev.sync()
            err = reference.relative_error(out.numpy(), ref)
            secs = baselines.cuda_event_median(lambda i: fn_run(x_dev[i % n_rot], out), args.repeats)
            return err, secs

        out = tvm.runtime.empty(wl.output_shape, "float32", dev)
        # the library's column: its choice among the scheduled algorithms (not register-reuse's records)
        scheduled = build.choose_schedule(tsc.algorithms.workloads_for(kernel, wl, "cuda"), target)[0].algorithm
        op = tsc.compile(kernel, wl.input_shape, strides=wl.strides, padding=p.padding, target="cuda",
                         algorithm=scheduled)
        err, secs = timed(op.run, out)
        row["library"] = {"schedule": op.schedule_source, "algorithm": op.algorithm, "relative_error": err, "seconds": secs}
        for b in built:
            if b["layer"] != name:
                continue
            if "error" in b:
                row["tiles"][b["tile"]] = {"error": b["error"]}
                print(f"{name} {b['tile']}: did not build: {b['error'][-200:]}", flush=True)
                continue
            f = tvm.runtime.load_module(b["path"])["sparse_conv2d"]
            try:
                err, secs = timed(lambda x, o, f=f: f(x, o), out)
            except Exception as e:  # noqa: BLE001 - e.g. a launch out of resources: a result, not the end of the run
                row["tiles"][b["tile"]] = {"error": f"{type(e).__name__}: {str(e)[-300:]}", "compile_s": b["compile_s"]}
                print(f"{name} {b['tile']}: did not run: {str(e)[-200:]}", flush=True)
                continue
            row["tiles"][b["tile"]] = {"relative_error": err, "seconds": secs, "compile_s": b["compile_s"]}
        for label, tf32 in (("cudnn_fp32", False), ("cudnn_tf32", True)):
            secs, _ = baselines.cudnn_seconds(xs, p.dense_kernel(), wl, tf32, args.repeats)
            row[label] = secs
        best = best_tile(row)
        row["best_tile"] = best[0]
        us = lambda s: f"{s * 1e6:7.1f}"  # noqa: E731
        print(f"{name:34s} lib {us(row['library']['seconds'])} ({row['library']['algorithm']}) "
              f"best {best[0]} {us(best[1]['seconds']) if best[1] else '   -   '} "
              f"err {best[1]['relative_error'] if best[1] else float('nan'):.1e} "
              f"cudnn fp32 {us(row['cudnn_fp32'])} tf32 {us(row['cudnn_tf32'])}", flush=True)
        rows.append(row)
        Path(args.json).write_text(json.dumps({**meta, "layers": rows}, indent=1))  # after each layer
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
