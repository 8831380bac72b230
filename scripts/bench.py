#!/usr/bin/env python
"""Benchmark the sparse conv2d against dense baselines, side by side in one process.

  python scripts/bench.py --sweeps headline                  # GPU if TVM sees one, else CPU
  python scripts/bench.py --sweeps sweeps --device cpu
  python scripts/bench.py --sweeps density --out benchmarks/results/nvidia-h100.json
  python scripts/bench.py --sweeps resnet50_network_s90_b1 --baselines cudnn_fp32,cudnn_tf32   # whole network

For each point: the same random input and pruned kernel for every contender; our output (written
into a NaN-poisoned buffer) is checked against a float64 reference before anything is timed;
conversion and compilation are timed separately from the kernel. Times are medians (see
tvm_sparseconv/baselines.py for the method); on a GPU they are device times (the host queues each
batch of calls ahead of the device), and `--call-times` adds the time per call from Python
(`call_seconds`: host overhead included) for ours and cuDNN, in the same run. Results merge into
the JSON file by (sweep, point), so a sweep can be run on its own and added to the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tvm  # noqa: E402

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv import algorithms, baselines, reference, targets  # noqa: E402
from tvm_sparseconv.network_time import markdown_with_calls  # noqa: E402
from tvm_sparseconv.workloads import Problem, workload_set  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None

TOLERANCE = 1e-5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", default="headline", help="workload set(s), comma-separated (scripts/tune.py --list)")
    ap.add_argument("--device", choices=["gpu", "cpu"], default=None, help="default: gpu if TVM sees one")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per contender (default 50 GPU, 5 CPU)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/<device>.json)")
    ap.add_argument("--no-baselines", action="store_true", help="time only the sparse kernel")
    ap.add_argument("--baselines", default="",
                    help="time only these dense baselines, comma-separated (e.g. cudnn_fp32,cudnn_tf32); default all")
    ap.add_argument("--algorithms", default="",
                    help="also time these algorithms, each forced, beside compile()'s own choice: comma-separated "
                         "names (tvm_sparseconv.algorithms), or 'all' for every one that runs on the device")
    ap.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                    help="tf32: also time what compile(..., precision='tf32') picks for each point (TF32 "
                         "algorithms allowed; checked at their tolerance), beside the fp32 choice (tf32_mode)")
    ap.add_argument("--call-times", action="store_true",
                    help="GPU: also time ours and cuDNN per call from Python, host overhead included (call_seconds)")
    ap.add_argument("--compile-workers", type=int, default=0, metavar="N",
                    help="first compile every point in N processes at once (filling the module cache; each "
                         "point's compile_s is then its time in that pool), then time them one by one")
    ap.add_argument("--compile-only", action="store_true",
                    help="compile every point (into the module cache, in --compile-workers processes) and stop")
    ap.add_argument("--ceilings", action="store_true",
                    help="also measure the device's fp32 GEMM rate and copy bandwidth (stored with the results)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", tsc.UntunedWarning)  # reported per point as "untuned"
    target = targets.resolve_target("cuda" if args.device == "gpu" else "cpu" if args.device == "cpu" else None)
    on_gpu = target.kind.name == "cuda"
    repeats = args.repeats or (50 if on_gpu else 5)
    device_name = tvm.cuda(0).device_name if on_gpu else f"cpu-{target.attrs.get('mcpu', '')}"
    folder = targets.target_folder_name(target)
    out = args.out or Path("benchmarks/results") / f"{folder}.json"
    problems = workload_set(args.sweeps) if args.sweeps != "none" else []
    forced = [a for a in algorithms.ALGORITHMS if args.algorithms == "all" or a in args.algorithms.split(",")]
    only_baselines = [b for b in args.baselines.split(",") if b]
    baselines.check_names(only_baselines, on_gpu)
    print(f"benchmarking {len(problems)} points on {device_name} ({target.kind.name}), {repeats} samples each")

    compile_s = compile_in_parallel(problems, str(target), args.compile_workers) if args.compile_workers else {}
    if args.compile_only:
        if not args.compile_workers:
            compile_s = compile_in_parallel(problems, str(target), 1)
        print(f"compiled {len(compile_s)} of {len(dict.fromkeys(p.name for p in problems))} layers "
              f"({sum(compile_s.values()):.0f} s in all)")
        return 0 if len(compile_s) == len(dict.fromkeys(p.name for p in problems)) else 1
    points = []
    it = tqdm(problems, unit="point") if tqdm else problems
    for problem in it:
        try:
            points.append(bench_point(problem, target, on_gpu, repeats, not args.no_baselines, forced,
                                      only_baselines, call_times=args.call_times and on_gpu,
                                      precision=args.precision))
            if problem.name in compile_s:
                points[-1]["compile_s"] = compile_s[problem.name]
        except Exception as e:  # noqa: BLE001 - one broken point must not lose the others
            points.append({"sweep": problem.sweep, "problem": problem.name, "value": problem.value, "error": repr(e)})
        print_point(points[-1], file=sys.stdout if tqdm is None else None)
    env = environment(device_name, target) | ({"compile_workers": args.compile_workers} if compile_s else {})
    if args.ceilings:
        env["ceilings"] = baselines.measure_ceilings(on_gpu)
        print(f"ceilings: {env['ceilings']}")
    results = merge(out, points, env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(points)
    kind = "gpu" if on_gpu else "cpu"
    totals = markdown_with_calls(points, kind)
    if totals:
        print("\nwhole networks (count x time per convolution shape):\n" + totals)
    print(f"wrote {out}")
    wrong = [p for p in points if "error" in p or not p.get("correct", False)
             or not all(a["correct"] for a in p.get("algorithms", {}).values())
             or not p.get("tf32_mode", {}).get("correct", True)]
    return 1 if wrong else 0


def _compile_one(name: str, target: str) -> float:
    """Worker of `compile_in_parallel`: compile one point as `bench_point` does (into the module cache)."""
    warnings.simplefilter("ignore", tsc.UntunedWarning)
    problem = workload_set(name)[0]
    t0 = time.perf_counter()
    tsc.compile(tsc.SparseKernel.from_dense(problem.dense_kernel()), problem.input_shape, strides=problem.strides,
                padding=problem.padding, target=target)
    return time.perf_counter() - t0


def compile_in_parallel(problems: list[Problem], target: str, workers: int) -> dict[str, float]:
    """Compile every distinct point in `workers` processes at once (the module cache keeps the
    builds for the timed run); {point name: compile seconds in the pool}. A point that fails here
    is left to `bench_point`, which reports its error."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    names = list(dict.fromkeys(p.name for p in problems))
    out: dict[str, float] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_compile_one, n, target): n for n in names}
        done = as_completed(futures)
        for f in tqdm(done, total=len(futures), unit="layer", desc="compiling") if tqdm else done:
            try:
                out[futures[f]] = f.result()
            except Exception as e:  # noqa: BLE001 - reported again, per point, by bench_point
                print(f"compiling {futures[f]} failed: {e!r}", file=sys.stderr)
    return out


def _check_and_time(op, xs, ref, on_gpu: bool, repeats: int,
                    call_times: bool = False) -> tuple[float, float, float | None]:
    """(relative error of a NaN-poisoned run against `ref`, median seconds, median seconds per call
    from Python or None) of a compiled op; `call_times` (GPU): also that per-call time (see
    baselines.cuda_event_median's `host_ahead`)."""
    dev, wl = op.device, op.workload
    x_dev = [tvm.runtime.tensor(x, dev) for x in xs]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
    op.run(x_dev[0], out)
    err = reference.relative_error(out.numpy(), ref)
    run = lambda i: op.run(x_dev[i % len(xs)], out)  # noqa: E731
    if not on_gpu:
        return err, baselines.median_wall(run, repeats), None
    per_call = baselines.cuda_event_median(run, repeats, host_ahead=False) if call_times else None
    return err, baselines.cuda_event_median(run, repeats), per_call


def _tf32_mode(problem: Problem, kernel, op, xs, ref, target, on_gpu: bool, repeats: int, ours: float,
               err: float) -> dict:
    """What `compile(..., precision="tf32")` runs for `problem` (fastest record, TF32 algorithms
    allowed), checked at its algorithm's tolerance and timed; the fp32 op's figures where it picks
    the same module."""
    t0 = time.perf_counter()
    op_tf32 = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding,
                          target=target, precision="tf32")
    compile_s = time.perf_counter() - t0
    if (op_tf32.algorithm, op_tf32.schedule_source) != (op.algorithm, op.schedule_source):
        err, ours, _ = _check_and_time(op_tf32, xs, ref, on_gpu, repeats)
    return {"seconds": ours, "relative_error": err, "correct": err <= algorithms.by_name(op_tf32.algorithm).tolerance,
            "algorithm": op_tf32.algorithm, "tuned": op_tf32.tuned, "schedule": op_tf32.schedule_source,
            "compile_s": compile_s}


def bench_point(problem: Problem, target, on_gpu: bool, repeats: int, with_baselines: bool,
                forced: list[str] = (), only_baselines: list[str] = (), call_times: bool = False,
                precision: str = "fp32") -> dict:
    rng = np.random.default_rng(1234)
    t0 = time.perf_counter()
    w = problem.dense_kernel()
    kernel = tsc.SparseKernel.from_dense(w)
    t_convert = time.perf_counter() - t0
    t0 = time.perf_counter()
    op = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding, target=target)
    t_compile = time.perf_counter() - t0
    # The layer as the user has it; `op.workload` is what runs (on CPUs a strided layer runs on its
    # input's stride phases: another shape and kernel, the same output).
    wl = problem.workload(kernel)
    n_rot = baselines.rotation_count(int(np.prod(wl.input_shape)) * 4) if on_gpu else 1
    xs = [rng.standard_normal(wl.input_shape, dtype=np.float32) for _ in range(n_rot)]

    # Correct first: poisoned output, float64 reference, before any timing.
    ref = reference.conv2d_f64(xs[0], w, wl)
    err, ours, ours_per_call = _check_and_time(op, xs, ref, on_gpu, repeats, call_times)
    times, errors = {"sparse": ours}, {"sparse": err}
    tf32_mode = _tf32_mode(problem, kernel, op, xs, ref, target, on_gpu, repeats, ours, err) if precision == "tf32" else None
    per_algorithm = {}
    for name in forced:
        if not algorithms.by_name(name).applies(op.workload, target.kind.name):
            continue
        t0 = time.perf_counter()
        forced_alg = algorithms.by_name(name)  # a TF32 one needs its precision, and is judged at its tolerance
        forced_op = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding,
                                target=target, algorithm=name, precision=forced_alg.precision)
        compile_s = time.perf_counter() - t0
        a_err, a_time, _ = _check_and_time(forced_op, xs, ref, on_gpu, repeats)
        per_algorithm[name] = {"seconds": a_time, "relative_error": a_err, "correct": a_err <= forced_alg.tolerance,
                               "schedule": forced_op.schedule_source, "ell_width": forced_op.workload.ell_width,
                               "chunk": forced_op.workload.chunk, "compile_s": compile_s}
    if with_baselines:
        base_times, base_errors = baselines.dense_baselines(xs, w, wl, on_gpu, repeats, ref, only_baselines)
        times.update(base_times)
        errors.update(base_errors)
    call = {}
    if ours_per_call is not None:
        call["sparse"] = ours_per_call
        for name, tf32 in (("cudnn_fp32", False), ("cudnn_tf32", True)):
            if isinstance(times.get(name), float):
                call[name] = baselines.cudnn_seconds(xs, w, wl, tf32, repeats, host_ahead=False)[0]
    useful = wl.useful_flops(kernel.nnz)
    return {
        "sweep": problem.sweep, "problem": problem.name, "value": problem.value, "count": problem.count,
        "input_shape": wl.input_shape, "kernel_shape": wl.kernel_shape, "strides": wl.strides,
        "density": kernel.density, "nnz": kernel.nnz, "ell_width": kernel.ell_width,
        "conv_input_shape": op.conv_input_shape,
        "schedule": op.schedule_source, "tuned": op.tuned, "algorithm": op.algorithm,
        "algorithms": per_algorithm,
        "relative_error": err, "correct": err <= TOLERANCE,
        "seconds": times, "relative_errors": errors, "convert_s": t_convert, "compile_s": t_compile, "input_rotation": n_rot,
        "useful_flops": useful, "dense_flops": wl.dense_flops(),
        "useful_tflops": useful / ours / 1e12,
    } | ({"call_seconds": call} if call else {}) | ({"tf32_mode": tf32_mode} if tf32_mode else {})


def environment(device_name: str, target) -> dict:
    env = {
        "device": device_name, "target": str(target), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(), "python": platform.python_version(),
        "versions": {"tvm": tvm.__version__, "numpy": np.__version__},
    }
    for mod in ("torch", "tensorflow", "jax", "cupy"):
        try:
            env["versions"][mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed here
            pass
    try:
        import torch

        if torch.cuda.is_available():
            env["versions"]["cuda"] = torch.version.cuda
            env["versions"]["cudnn"] = torch.backends.cudnn.version()
            env["driver"] = _nvidia_driver()
    except ImportError:
        pass
    return env


def _nvidia_driver() -> str:
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def merge(path: Path, points: list[dict], env: dict) -> dict:
    """New points replace old ones of the same (sweep, problem); the environment is the latest run's
    (measured ceilings are kept from an earlier run when this one measured none)."""
    old = json.loads(path.read_text()) if path.is_file() else {"points": []}
    if "ceilings" not in env and "ceilings" in old:
        env = env | {"ceilings": old["ceilings"]}
    fresh = {(p["sweep"], p["problem"]) for p in points}
    kept = [p for p in old.get("points", []) if (p["sweep"], p["problem"]) not in fresh]
    runs = old.get("runs", []) + [env | {"points": sorted(fresh)}]
    return env | {"runs": runs, "points": kept + points}


def _fmt(v) -> str:
    return f"{v * 1e3:9.3f}" if isinstance(v, float) else f"{'n/a':>9}"


def print_point(p: dict, file=None) -> None:
    msg = f"{p['problem']}: " + (f"ERROR {p['error']}" if "error" in p else
                                 f"{p['seconds']['sparse'] * 1e3:.3f} ms, err {p['relative_error']:.1e}, {p['schedule']}"
                                 + "".join(f"; {n} {a['seconds'] * 1e3:.3f} ms err {a['relative_error']:.1e}"
                                           for n, a in p.get("algorithms", {}).items())
                                 + ("; tf32 mode {algorithm} {ms:.3f} ms err {relative_error:.1e}".format(
                                     ms=p["tf32_mode"]["seconds"] * 1e3, **p["tf32_mode"]) if "tf32_mode" in p else ""))
    if tqdm is not None and file is None:
        tqdm.write(msg)
    else:
        print(msg, file=file)


def print_table(points: list[dict]) -> None:
    names = sorted({k for p in points if "seconds" in p for k in p["seconds"] if k != "sparse"})
    print(f"\n{'point':<26}{'sparse ms':>10}" + "".join(f"{n + ' ms':>16}" for n in names)
          + f"{'TFLOP/s':>9}{'rel.err':>9}  schedule")
    for p in points:
        if "error" in p:
            print(f"{p['problem']:<26} ERROR {p['error'][:90]}")
            continue
        s = p["seconds"]
        print(f"{p['problem']:<26}{_fmt(s['sparse']):>10}" + "".join(f"{_fmt(s.get(n)):>16}" for n in names)
              + f"{p['useful_tflops']:>9.2f}{p['relative_error']:>9.1e}  {p['schedule']}")
        for name, a in p.get("algorithms", {}).items():
            print(f"{'  forced ' + name:<26}{_fmt(a['seconds']):>10}{'':>{16 * len(names) + 9}}"
                  f"{a['relative_error']:>9.1e}  {a['schedule']}")
        if "tf32_mode" in p:
            t = p["tf32_mode"]
            print(f"{'  tf32 mode':<26}{_fmt(t['seconds']):>10}{'':>{16 * len(names) + 9}}"
                  f"{t['relative_error']:>9.1e}  {t['schedule']}")


if __name__ == "__main__":
    sys.exit(main())
