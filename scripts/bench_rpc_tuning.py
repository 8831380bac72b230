#!/usr/bin/env python
"""Wall time of tuning one workload set through TVM's RPC tracker with 1, 2, ... GPUs of this machine.

  python scripts/bench_rpc_tuning.py --gpu-counts 1,2 --workloads resnet50_1x1_b1 --trials 32

For each GPU count: a fresh tracker with one server per GPU (scripts/rpc_cluster.py's LocalCluster),
then `scripts/tune.py --rpc ... --workers <count>` from scratch (an empty work folder, so no run
warm-starts from another), then the cluster is stopped. `--workers W` tunes W workloads at once
whatever the GPU count (1 GPU with 2 workers tells how much of a 2-GPU gain is only the overlap of
one workload's search and builds with another's measurements). Results merge into the JSON file by
run ("<n>gpu-<w>workers"), so the runs can be made in separate commands. The speed-up is against
1 GPU with 1 worker: of the wall times when both runs finished, else of the times at which each
had finished its k-th workload (k: the most both reached). The steady rate leaves out each worker's
first workload, which also pays the process start-up (starting Python, importing TVM):
seconds per workload between the w-th and the last finished one. `--report FILE` reprints a
results file (and recomputes its ratios) without tuning. With --keep-records the run with the most GPUs
writes into tuning_logs/<gpu>/ like any tuning (workloads already there are then skipped: pick a
set that is not tuned yet); the other runs write into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tvm_sparseconv.rpc import probe  # noqa: E402
from tvm_sparseconv.rpc_cluster import LocalCluster, free_port, local_gpu_count, stop_process  # noqa: E402
from tvm_sparseconv.tuning_records import logs_root  # noqa: E402
from tvm_sparseconv.tuning_runner import SESSION_PER  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-counts", default="1,2", help="comma-separated GPU counts to time (default 1,2)")
    ap.add_argument("--workloads", default="resnet50_1x1_b1", help="workload set(s) to tune (scripts/tune.py --list)")
    ap.add_argument("--trials", type=int, default=32, help="trials per workload (default 32)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default benchmarks/results/"
                         "rpc-tuning-<gpu>-<trials>trials-session-per-<rpc-sessions>.json)")
    ap.add_argument("--workers", type=int, default=None,
                    help="workloads tuned at once (default: one per GPU)")
    ap.add_argument("--sessions", choices=["fork", "spawn"], default="fork",
                    help="how the servers run sessions (default fork, see rpc_cluster.py)")
    ap.add_argument("--rpc-sessions", choices=SESSION_PER, default="batch",
                    help="tune.py --rpc-sessions: an RPC session per share of a batch (default) or per "
                         "candidate (MetaSchedule's RPCRunner); one results file per choice")
    ap.add_argument("--cpu", action="store_true",
                    help="use 1..N CPU servers instead of GPUs (to try the script on a machine without one)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop each count's tuning after this many seconds and record what finished "
                         "(workloads done, wall time); for device calls with a time limit")
    ap.add_argument("--report", type=Path, default=None, metavar="FILE",
                    help="only recompute and print the table of an earlier results file")
    ap.add_argument("--keep-records", action="store_true",
                    help="merge the records of the largest count into tuning_logs/<gpu>/")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        data = json.loads(args.report.read_text())
        summarize(data)
        args.report.write_text(json.dumps(data, indent=1) + "\n")
        print_table(data)
        return 0
    counts = [int(c) for c in args.gpu_counts.split(",")]
    have = local_gpu_count()
    if not args.cpu and max(counts) > have:
        print(f"asked for {max(counts)} GPUs, TVM sees {have}", file=sys.stderr)
        return 1
    if args.out and args.out.exists():
        check_same_sessions(json.loads(args.out.read_text()), args.out, args.rpc_sessions)
    runs = {}
    device = folder = None
    for n in counts:
        workers = args.workers or n
        with tempfile.TemporaryDirectory(prefix="rpc_tuning_") as tmp:
            tmp = Path(tmp)
            devices = dict(servers=n) if args.cpu else dict(gpus=list(range(n)))
            cluster = LocalCluster(f"bench-{n}", **devices, port=free_port(),
                                   server_port=free_port(), log_dir=tmp / "logs",
                                   fork_sessions=args.sessions == "fork")
            with cluster:
                remote = probe(cluster.tracker)
                device, folder = remote.device_name, remote.folder_name
                print(f"\n=== {n} server(s), {workers} worker(s): {device}, tracker {cluster.tracker} ===",
                      flush=True)
                keep = args.keep_records and n == max(counts)
                db = logs_root() / folder if keep else tmp / "db"
                cmd = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--workloads", args.workloads,
                       "--trials", str(args.trials), "--rpc", f"{cluster.host}:{cluster.port}",
                       "--key", cluster.key, "--workers", str(workers), "--out", str(db),
                       "--rpc-sessions", args.rpc_sessions,
                       "--work-dir", str(tmp / "work"),
                       "--summary-json", str(tmp / "summary.json")]
                t0 = time.time()
                proc = subprocess.Popen(cmd, start_new_session=True)
                try:
                    rc = proc.wait(args.time_limit)
                except subprocess.TimeoutExpired:
                    stop_process(proc.pid, proc)  # the whole group: tune.py and its workers
                    rc = "stopped at --time-limit"
                wall = time.time() - t0
            summary = json.loads((tmp / "summary.json").read_text()) if (tmp / "summary.json").exists() else {}
            runs[run_label(n, workers)] = {
                "gpus": n, "workers": workers, "wall_s": wall, "sessions": args.sessions,
                "rpc_sessions": args.rpc_sessions, "returncode": rc,
                "finished": summary.get("finished"), "workloads": summary.get("workloads", [])}
            print(f"{n} server(s), {workers} worker(s): {wall:.1f} s, exit {rc}", flush=True)

    out = args.out or default_out(folder, args.trials, args.rpc_sessions)
    data = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    data.update(device=device, workloads=args.workloads, trials=args.trials,
                date=time.strftime("%Y-%m-%d %H:%M:%S"))
    data["runs"].update(runs)
    summarize(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print_table(data)
    print(f"results in {out}")
    return 0 if all(r["returncode"] in (0, "stopped at --time-limit") for r in runs.values()) else 1


def default_out(folder: str, trials: int, rpc_sessions: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"rpc-tuning-{folder}-{trials}trials-session-per-{rpc_sessions}.json"


def check_same_sessions(data: dict, path: Path, rpc_sessions: str) -> None:
    """Runs of one file are compared with each other: they must share --rpc-sessions."""
    other = {run.get("rpc_sessions", "candidate") for run in data.get("runs", {}).values()} - {rpc_sessions}
    if other:
        raise SystemExit(f"{path} holds runs with --rpc-sessions {', '.join(sorted(other))}, not {rpc_sessions}: "
                         "give another --out")


def summarize(data: dict) -> None:
    """Adds each run's steady rate and its ratios against 1 GPU with 1 worker."""
    for run in data["runs"].values():
        run["steady_s_per_workload"] = steady_rate(run)
    base = data["runs"].get(run_label(1, 1))
    for run in data["runs"].values():
        run["speedup_vs_1gpu"] = speedup(base, run) if base else None
        both = base and base["steady_s_per_workload"] and run["steady_s_per_workload"]
        run["steady_speedup_vs_1gpu"] = base["steady_s_per_workload"] / run["steady_s_per_workload"] if both else None


def print_table(data: dict) -> None:
    print(f"\n{data.get('device')}, {data.get('workloads')}, {data.get('trials')} trials per workload")
    print(f"{'run':<16}{'finished':>9}{'wall':>9}{'speed-up vs 1 GPU':>28}{'steady s/workload':>19}{'ratio':>7}")
    for key in sorted(data["runs"], key=lambda k: (data["runs"][k]["gpus"], data["runs"][k]["workers"])):
        run = data["runs"][key]
        sp = run["speedup_vs_1gpu"]
        sp = "-" if sp is None else f"{sp['ratio']:.2f}x ({sp['basis']})"
        done = f"{len(run['workloads'])}{'' if run['finished'] else '+'}"
        steady, ratio = run["steady_s_per_workload"], run["steady_speedup_vs_1gpu"]
        steady = "-" if steady is None else f"{steady:.1f}"
        ratio = "-" if ratio is None else f"{ratio:.2f}x"
        print(f"{key:<16}{done:>9}{run['wall_s']:>8.1f}s{sp:>28}{steady:>19}{ratio:>7}")


def steady_rate(run: dict) -> float | None:
    """Seconds per workload after every worker has finished its first one (None if too few)."""
    times, w = done_times(run), run["workers"]
    if len(times) <= w:
        return None
    return (times[-1] - times[w - 1]) / (len(times) - w)


def run_label(gpus: int, workers: int) -> str:
    return f"{gpus}gpu-{workers}workers"


def done_times(run: dict) -> list[float]:
    """When each finished workload was done, seconds from the start of tuning, in order."""
    return sorted(w["done_at_s"] for w in run["workloads"] if "done_at_s" in w and "error" not in w)


def speedup(base: dict, run: dict) -> dict | None:
    """`base`'s time over `run`'s: whole runs if both finished, else to the k-th finished workload."""
    if base.get("finished") and run.get("finished"):
        return {"ratio": base["wall_s"] / run["wall_s"], "basis": "whole run"}
    a, b = done_times(base), done_times(run)
    k = min(len(a), len(b))
    if k == 0:
        return None
    return {"ratio": a[k - 1] / b[k - 1], "basis": f"first {k} workloads"}


if __name__ == "__main__":
    sys.exit(main())
