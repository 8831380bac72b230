#!/usr/bin/env python
"""Tune sparse conv2d workloads with MetaSchedule and keep the results in tuning_logs/<device>/.

Examples:
  python scripts/tune.py --workloads headline --trials 256              # CUDA if a GPU is seen
  python scripts/tune.py --workloads kernel_size,density --trials 128
  python scripts/tune.py --workloads tiny --trials 16 --target llvm     # this CPU
  python scripts/tune.py --list                                         # the workload sets
  python scripts/tune.py --workloads sweeps --rpc 127.0.0.1:9190 --key h100   # on a tracker's GPUs

Each workload: evolutionary search with the XGBoost cost model over the templates in schedules/,
every candidate timed on the workload's real sparse pattern; the best candidates are checked against
a float64 reference and the first correct one is kept, unless one of the templates' untuned variants,
another GPU of the architecture's record of the layer, or this folder's record of its shape at another
ELL width (each checked too, timed in turns with it) runs faster. Workloads already in the output folder are
skipped (use --force to tune them again: the new record replaces the old only if it ran faster, the
two timed in turns in the same run); an interrupted workload restarts warm from its work dir.

The generated algorithms (`--algorithm register-reuse` on a GPU, `cpu-register-reuse` on a CPU:
the kernel's values compiled into the code; `csr-split-k` on a GPU and `cpu-csr` on a CPU: built
per layer from a tile, the weights as data) have no MetaSchedule design space; their tiles are
measured instead (`tvm_sparseconv/tile_tuning.py`): the tiles that won some layer in the committed
records (or --tiles), and the tile of the layer's record on another device of the family, that fit
the layer's compile-time budget are built, checked against float64
and timed beside the layer's scheduled choice; the fastest becomes the layer shape's tile record
(tuning_logs/<device>/<algorithm>.json), unless the scheduled choice was faster in the same run:
  python scripts/tune.py --workloads resnet50_network_s90_b32 --algorithm register-reuse
  python scripts/tune.py --workloads resnet50_3x3_b1 --algorithm cpu-register-reuse --tiles l16b1h,l16b4h
  python scripts/tune.py --workloads resnet50_conv5_1x1_reduce_b1 --algorithm csr-split-k --tiles all
  python scripts/tune.py --workloads headline,resnet50_3x3_b1 --algorithm cpu-csr --tiles all --target llvm

With --rpc, candidates are built here and measured on the RPC servers registered with the tracker
under --key (one server per GPU, see scripts/rpc_cluster.py); --workers workloads are tuned at once
(default: one per server), and the tuning-log folder is named after the servers' device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tuning never hands torch tensors to TVM; without this, every process that imports TVM (the tuning
# workers and each builder process) probes CUDA through torch when torch is installed.
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from tvm_sparseconv import algorithms, baselines, targets  # noqa: E402
from tvm_sparseconv.rpc import Tracker, probe  # noqa: E402
from tvm_sparseconv.tuning import (drop_records, problem_arguments, tune_in_parallel, tune_problem,  # noqa: E402
                                   tuned_problems)
from tvm_sparseconv.tuning_records import TuningLogError, logs_root, read_meta  # noqa: E402
from tvm_sparseconv.tuning_runner import SESSION_PER  # noqa: E402
from tvm_sparseconv.workload import ConvWorkload  # noqa: E402,F401
from tvm_sparseconv.workloads import WORKLOAD_SETS, Problem, workload_set  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety
    tqdm = None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="headline", help="workload set(s), comma-separated (see --list)")
    ap.add_argument("--trials", type=int, default=256,
                    help="measured candidates per workload (default 256; a search round that comes back "
                         "short by at most 1/8 of a round is not topped up, see tuning.enough_trials)")
    ap.add_argument("--target", choices=["cuda", "llvm"], default=None, help="default: cuda if TVM sees a GPU, else llvm")
    ap.add_argument("--mcpu", default=None,
                    help="with --target llvm: tune for this LLVM CPU instead of this machine's (e.g. an AVX2 "
                         "CPU's record on an AVX-512 machine); the machine must run its code")
    ap.add_argument("--out", type=Path, default=None, help="database folder (default tuning_logs/<device>)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="per-workload MetaSchedule work dirs (default ~/.cache/tvm_sparseconv/tuning)")
    ap.add_argument("--algorithm", default=algorithms.DEFAULT, choices=list(algorithms.ALGORITHMS),
                    help=f"which computation to tune (default {algorithms.DEFAULT}); compile() takes, per layer, "
                         "the algorithm whose record is fastest. The generated ones ("
                         + ", ".join(n for n, a in algorithms.ALGORITHMS.items() if a.generated)
                         + ": built per kernel from a tile) are tuned by measuring their tiles (--tiles), "
                           "not by MetaSchedule")
    ap.add_argument("--tiles", default=None,
                    help="generated algorithms: the tiles to measure, comma-separated, or 'all' (default: the "
                         "tiles that won some layer in the committed records, and the layer's default tile; the "
                         "family's record tile of the layer is always added); only those that fit the layer's "
                         "compile-time budget are built")
    ap.add_argument("--build-workers", type=int, default=None,
                    help="generated algorithms: tiles built at once (default: the CPU count, at most 16)")
    ap.add_argument("--rules", default=None, help="comma-separated schedule rule names (default: all for the target)")
    ap.add_argument("--force", action="store_true",
                    help="tune workloads that already have a record (the new record replaces it only if faster, "
                         "the two timed in turns in this run)")
    ap.add_argument("--drop", action="store_true",
                    help="remove the folder's records of the workloads under --algorithm instead of tuning them "
                         "(MetaSchedule's: the record and its meta.json entry; a generated algorithm's: the tile "
                         "records of the layer's shape and density), e.g. a record that made a layer slower: "
                         "--drop --out tuning_logs/nvidia-h100 --workloads resnet50_conv5_3x3_b1")
    ap.add_argument("--no-baseline", action="store_true", help="skip timing the dense baseline")
    ap.add_argument("--summary-json", type=Path, default=None, help="write the per-workload summary here")
    ap.add_argument("--list", action="store_true", help="list the workload sets and exit")
    own = ap.add_argument_group("your own layer (instead of --workloads): tuned on its real sparsity pattern")
    own.add_argument("--kernel", type=Path, default=None, help="a SparseKernel saved with kernel.save(PATH)")
    own.add_argument("--input-shape", default=None, help="N,H,W,C of the layer's input")
    own.add_argument("--strides", default="1,1", help="h,w (default 1,1)")
    own.add_argument("--dilations", default="1,1", help="h,w (default 1,1)")
    own.add_argument("--padding", default="SAME", help="SAME, VALID or top,bottom,left,right")
    own.add_argument("--bias", action="store_true", help="the layer adds a bias")
    own.add_argument("--activation", choices=["relu", "relu6"], default=None, help="fused activation")
    ap.add_argument("--verbose", action="store_true", help="show MetaSchedule's own log")
    far = ap.add_argument_group("measuring on other machines (TVM's RPC tracker)")
    far.add_argument("--rpc", metavar="HOST:PORT", default=None, help="the RPC tracker's address")
    far.add_argument("--key", default=None, help="the device key the servers registered with")
    far.add_argument("--workers", type=int, default=None,
                     help="workloads tuned at once (default: 1 locally, one per server with --rpc)")
    far.add_argument("--rpc-sessions", choices=SESSION_PER, default="batch",
                     help="an RPC session per share of a batch (default; a session costs a server process "
                          "and a CUDA context) or per candidate (MetaSchedule's RPCRunner)")
    args = ap.parse_args(argv)
    if (args.rpc is None) != (args.key is None):
        ap.error("--rpc and --key go together")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.workers and args.workers > 1 and not args.rpc:
        ap.error("--workers above 1 needs --rpc: workloads tuned side by side on one device would time each other")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, problems in WORKLOAD_SETS.items():
            print(f"{name:<22} {len(problems):>3} workloads: {', '.join(p.name for p in problems[:4])}"
                  + (" ..." if len(problems) > 4 else ""))
        return 0
    tracker = None
    if args.rpc:
        tracker = Tracker.parse(args.rpc, args.key)
        remote = probe(tracker)
        if args.target and args.target != remote.target.kind.name:
            raise SystemExit(f"--target {args.target}, but the servers of {tracker} run {remote.target.kind.name}")
        target, folder_name, device_name = remote.target, remote.folder_name, remote.device_name
        servers = tracker.servers()
        print(f"tracker {tracker}: {servers} server(s) with {device_name}")
    else:
        target = targets.resolve_target(args.target)
        if args.mcpu:
            if target.kind.name != "llvm":
                raise SystemExit("--mcpu is for --target llvm")
            target = targets.cpu_target(args.mcpu)
        folder_name = targets.target_folder_name(target)
        device_name = targets.device_name(target)
        servers = 1
    workers = args.workers or servers
    out = args.out or logs_root() / folder_name
    work_root = args.work_dir or Path.home() / ".cache" / "tvm_sparseconv" / "tuning" / folder_name
    problems = [_own_problem(args)] if args.kernel else workload_set(args.workloads)
    if args.drop:
        return _drop(problems, out, args.algorithm, target.kind.name)
    problems = [p.for_target(target.kind.name) for p in problems]  # as compile() computes them there
    if algorithms.by_name(args.algorithm).generated:
        if tracker is not None:
            raise SystemExit(f"{args.algorithm}'s tiles are measured on this machine's device: no --rpc")
        return _search_tiles(problems, target, out, args)
    if not algorithms.by_name(args.algorithm).applies(problems[0].workload(), target.kind.name):
        raise SystemExit(f"algorithm {args.algorithm} does not run on {target.kind.name}")
    try:
        done = tuned_problems(out)  # a damaged meta.json refuses here, before any tuning
    except TuningLogError as e:
        raise SystemExit(f"{e}: not tuning into it (rewriting it would lose entries); restore it, e.g. "
                         f"with git checkout, or move it away, and run again") from None
    todo = [p for p in problems if args.force or p.workload(algorithm=args.algorithm) not in done]
    print(f"tuning {len(todo)} of {len(problems)} workloads ({len(problems) - len(todo)} already in {out}) "
          f"for {device_name} [{target.kind.name}], algorithm {args.algorithm}, {args.trials} trials each"
          + (f", {workers} at a time" if workers > 1 else ""))
    options = dict(rule_names=args.rules.split(",") if args.rules else None, device_name=device_name,
                   algorithm=args.algorithm,
                   tracker=tracker, rpc_workers=servers, rpc_session_per=args.rpc_sessions)
    baseline = not args.no_baseline and tracker is None  # dense baselines run here, not on the servers

    t0 = time.time()

    def write_summary(rows: list[dict], finished: bool) -> None:
        """Written after every workload, so a run cut short still leaves what it finished."""
        if not args.summary_json:
            return
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"device": device_name, "target": str(target), "trials": args.trials, "workers": workers,
                   "algorithm": args.algorithm,
                   "rpc": None if tracker is None else {"tracker": f"{tracker.host}:{tracker.port}",
                                                        "key": tracker.key, "servers": servers,
                                                        "rpc_sessions": args.rpc_sessions},
                   "finished": finished, "wall_s": time.time() - t0, "workloads": rows}
        tmp = args.summary_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, args.summary_json)

    def on_row(rows: list[dict]) -> None:
        rows[-1]["done_at_s"] = time.time() - t0  # when it finished, to compare runs cut short
        write_summary(rows, finished=False)

    if workers > 1 and len(todo) > 1:
        rows = _tune_parallel(todo, target, out, work_root, args, workers, options, baseline, on_row)
    else:
        rows = _tune_serial(todo, target, out, work_root, args, options, baseline, on_row)

    width = max([28] + [len(row["problem"]) + 2 for row in rows])  # ResNet's names are longer than 28
    print(f"\n{'workload':<{width}}{'rule':<26}{'best':>10}  {'dense':<46}{'tuning':>9}")
    for row in rows:
        print(_line(row, table=width))
    print(f"records in {out}; total {(time.time() - t0) / 60:.1f} min")
    write_summary(rows, finished=True)
    return 1 if any("error" in r for r in rows) else 0


def _search_tiles(problems: list[Problem], target, out: Path, args) -> int:
    """`--algorithm <generated>`: per layer, `tile_tuning.search` (every tile built, checked against
    float64, timed beside the layer's scheduled choice; the fastest recorded in `out`)."""
    from tvm_sparseconv import tile_records, tile_tuning

    kind, name = target.kind.name, args.algorithm
    tiles = args.tiles.split(",") if args.tiles else None
    workers = args.build_workers or min(16, os.cpu_count() or 1)
    todo, skipped = [], []
    for p in problems:
        try:
            kernel, wl = tile_tuning.generated_workload(p, name, kind)
        except ValueError as e:
            skipped.append(f"{p.name}: {e}")
            continue
        old = tile_records.find(out, name, wl, int(kernel.nnz))
        if args.force or old is None or not tile_records.same_density(old, int(kernel.nnz)):
            todo.append(p)
    for line in skipped:
        print(f"skipped {line}")
    print(f"searching {name}'s tiles for {len(todo)} of {len(problems)} workloads "
          f"({len(problems) - len(todo) - len(skipped)} already recorded in {out}) on {targets.device_name(target)}")
    rows, t0 = [], time.time()
    for p in tqdm(todo, unit="layer", desc="tiles") if tqdm else todo:
        write = tqdm.write if tqdm else print
        say = lambda msg, p=p: write(f"{p.name}: {msg}")  # noqa: E731
        try:
            res = tile_tuning.search(p, name, target, out, tiles, workers=workers, on_progress=say)
            row = res.as_dict()
            best = res.best
            say(f"best {best} {res.tiles[best]['seconds'] * 1e6:.1f} us" if best else "no tile computed correctly")
            say(f"scheduled {res.scheduled['schedule']} {res.scheduled['seconds'] * 1e6:.1f} us; "
                + (f"recorded {res.recorded}" if res.recorded else f"not recorded: {res.why_not}")
                + f" ({res.seconds:.0f} s)")
        except Exception as e:  # noqa: BLE001 - one layer's failure is reported, the others go on
            row = {"problem": p.name, "algorithm": name, "error": f"{type(e).__name__}: {e}"}
            say(f"FAILED: {row['error'][:200]}")
        rows.append(row)
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps({"device": targets.device_name(target), "target": str(target),
                                                     "algorithm": name, "wall_s": time.time() - t0,
                                                     "workloads": rows}, indent=1) + "\n")
    print(f"tile records in {tile_records.path_for(out, name)}; total {(time.time() - t0) / 60:.1f} min")
    return 1 if any("error" in r for r in rows) else 0


def _tune_serial(todo, target, out, work_root, args, options, baseline, on_row) -> list[dict]:
    rows = []
    t0 = time.time()
    for i, problem in enumerate(todo):
        eta = "" if i == 0 else f", ETA {(time.time() - t0) / i * (len(todo) - i) / 60:.1f} min"
        print(f"\n[{i + 1}/{len(todo)}{eta}] {problem.name}: input {problem.input_shape}, kernel "
              f"{problem.kernel_shape}, density {problem.density}")
        bar = tqdm(total=args.trials, unit="cand", desc=problem.name, leave=False) if tqdm else None

        def on_batch(n, best, bar=bar):
            if bar is not None:
                bar.update(n)
                bar.set_postfix(best_us=f"{best * 1e6:.1f}")

        try:
            res = tune_problem(problem, target, out, args.trials, work_root, on_batch=on_batch,
                               quiet=not args.verbose, **options)
        except Exception as e:  # noqa: BLE001 - report, keep going with the next workload
            res = e
        if bar is not None:
            bar.close()
        rows.append(_row(problem, res, target, baseline))
        print("  " + _line(rows[-1]))
        on_row(rows)
    return rows


def _tune_parallel(todo, target, out, work_root, args, workers, options, baseline, on_row) -> list[dict]:
    """Several workloads at once, each in its own process; one bar over all candidates."""
    bar = tqdm(total=args.trials * len(todo), unit="cand", desc=f"{len(todo)} workloads") if tqdm else None
    best: dict[str, float] = {}
    rows = []

    def on_batch(name, n, best_s):
        best[name] = best_s
        if bar is not None:
            bar.update(n)
            bar.set_postfix_str(", ".join(f"{k} {v * 1e6:.0f}us" for k, v in list(best.items())[-workers:]))

    def on_done(problem, res):
        rows.append(_row(problem, res, target, baseline))
        on_row(rows)
        line = f"{problem.name}: {_line(rows[-1])}"
        (bar.write if bar is not None else print)(line)

    tune_in_parallel(todo, target, out, args.trials, work_root, workers, on_batch, on_done,
                     quiet=not args.verbose, **options)
    if bar is not None:
        bar.close()
    order = {p.name: i for i, p in enumerate(todo)}
    return sorted(rows, key=lambda r: order[r["problem"]])


def _drop(problems: list[Problem], out: Path, algorithm: str, kind: str) -> int:
    """`--drop`: remove `out`'s records of `problems` under `algorithm`, each as the folder's device
    computes it (its meta.json's target kind, else `kind`)."""
    if not out.is_dir():
        raise SystemExit(f"no tuning-log folder {out}")
    try:
        meta = read_meta(out)
    except TuningLogError as e:
        raise SystemExit(f"{e}: not editing it; restore it, e.g. with git checkout") from None
    kind = (meta or {}).get("target", {}).get("kind", kind)
    for problem in problems:
        n = drop_records(out, problem.for_target(kind), algorithm)
        print(f"{problem.name}: {n} {algorithm} record(s) removed from {out}" if n else
              f"{problem.name}: no {algorithm} record in {out}")
    return 0


def _row(problem: Problem, res, target, baseline: bool) -> dict:
    if isinstance(res, BaseException):
        return {"problem": problem.name, "error": str(res)}
    row = {"problem": problem.name, "rule": res.rule, "best_us": res.best_seconds * 1e6,
           "relative_error": res.relative_error, "tuning_s": res.tuning_seconds,
           "rejected_as_wrong": res.rejected, "phases_s": res.phases, "measured": res.measured,
           "not_kept": res.not_kept, "source": res.source, "candidates_us": res.candidates_us,
           "reduction_shares": res.reduction_shares, "reduction_in_cluster": res.reduction_in_cluster}
    if baseline:
        row["dense_us"] = _dense_us(problem, target)
    return row


def _ints(text: str, n: int, name: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise SystemExit(f"--{name} must be {n} comma-separated integers, got {text!r}")
    return vals


def _own_problem(args) -> Problem:
    from tvm_sparseconv import SparseKernel

    if args.input_shape is None:
        raise SystemExit("--kernel needs --input-shape N,H,W,C")
    pad = args.padding.upper()
    if pad not in ("SAME", "VALID"):
        t, b, l, r = _ints(args.padding, 4, "padding")
        pad = [(t, b), (l, r)]
    kernel = SparseKernel.load(args.kernel)
    return Problem.from_kernel(kernel, _ints(args.input_shape, 4, "input-shape"), _ints(args.strides, 2, "strides"),
                               pad, _ints(args.dilations, 2, "dilations"), args.bias, args.activation,
                               name=args.kernel.stem)


def _dense_us(problem: Problem, target) -> dict:
    """The dense baselines of the layer as given (not as this target computes it: `Problem.layer`)."""
    wl, w, arrays = problem_arguments(problem.layer or problem)
    res, _ = baselines.dense_baselines([arrays[0]], w, wl, on_gpu=target.kind.name == "cuda", repeats=20)
    return {k: (v * 1e6 if isinstance(v, float) else v) for k, v in res.items()}


def _line(row: dict, table: int = 0) -> str:
    """One workload's result: a table row `table` characters wide in its first column, or a sentence."""
    if "error" in row:
        return f"{row['problem']:<{table or 28}}FAILED: {row['error'][:80]}"
    dense = ", ".join(f"{k} {v:.1f} us" for k, v in row.get("dense_us", {}).items() if isinstance(v, float))
    if table:
        return (f"{row['problem']:<{table}}{row['rule']:<26}{row['best_us']:>8.1f}us"
                f"  {dense:<46}{row['tuning_s'] / 60:>6.1f}min")  # columns stay apart when a field is longer
    kept = f"; not kept: {row['not_kept']}" if row.get("not_kept") else ""
    if row.get("source", "search") != "search":  # an untuned template or another device's record beat the search
        kept = f"; from {row['source']}, faster than the search's best{kept}"
    shares = row.get("reduction_shares", 1)
    split = f", reduction in {shares} shares" if shares > 1 else ""
    split += " (a cluster)" if shares > 1 and row.get("reduction_in_cluster") else ""
    return (f"best {row['best_us']:.1f} us ({row['rule']}{split}, rel. error {row['relative_error']:.1e}, "
            f"{row['tuning_s']:.0f} s); dense: {dense or 'not timed'}{kept}")


if __name__ == "__main__":
    sys.exit(main())
