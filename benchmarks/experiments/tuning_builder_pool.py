#!/usr/bin/env python
"""Tuning time per workload with MetaSchedule's LocalBuilder against the library's pooled builder.

  python benchmarks/experiments/tuning_builder_pool.py [--target llvm] [--trials 16] [--rounds 2]
  python benchmarks/experiments/tuning_builder_pool.py --arms pooled,pooled-start-now \
      --out benchmarks/experiments/tuning_builder_pool-start-now.json

LocalBuilder starts new Python processes (importing TVM) for every batch and for a sanity check
per workload; `tuning_builder.pooled_builder` keeps one pool per process. Each round tunes the
`tiny` workloads one after another in a fresh process per builder, alternating which builder goes
first; the per-workload tuning seconds and MetaSchedule's profiler phases go to the JSON beside
this script. The first workload of a process also pays one-off imports, so the later ones are the
comparison of builders. `tuning_builder_pool-before-intrin-skip.json` is the same run from before
tuning stopped importing `tvm.s_tir.tensor_intrin` and kept its runner across workloads (first
workloads 53-58 s there; both arms use the kept runner now). The second command compares the pool
whose first batch starts its processes with one that starts them when it is made (to overlap the
first search round): only the first workload of a process can differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


ARMS = {  # arm: what builds the candidates
    "local": "MetaSchedule's LocalBuilder (new processes for every batch)",
    "pooled": "the pooled builder (its processes started by the first batch)",
    "pooled-start-now": "the pooled builder, its processes started in the background when it is made",
}


def one_process(target: str, trials: int, arm: str) -> list[dict]:
    from tvm_sparseconv.targets import resolve_target
    from tvm_sparseconv.tuning import tune_problem
    from tvm_sparseconv.tuning_builder import pooled_builder
    from tvm_sparseconv.workloads import workload_set

    if arm == "pooled-start-now":
        pooled_builder(start_now=True)  # the pool tune_problem then reuses
    pooled = arm != "local"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for problem in workload_set("tiny") * 2:  # each workload twice: the second runs warm-started
            res = tune_problem(problem, resolve_target(target), Path(tmp) / "db", trials, Path(tmp) / "work",
                               pooled_builds=pooled)
            rows.append({"problem": problem.name, "tuning_s": res.tuning_seconds,
                         "build_s": res.phases.get("SendToBuilder"), "ms_total_s": res.phases.get("Total")})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="llvm")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arms", default="local,pooled",
                    help="comma-separated, run in this order and reversed every other round: "
                         + "; ".join(f"{k}: {v}" for k, v in ARMS.items()))
    ap.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tuning_builder_pool.json"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_process(args.target, args.trials, args.child)))
        return 0

    arms = args.arms.split(",")
    if not set(arms) <= set(ARMS):
        ap.error(f"--arms: choose among {', '.join(ARMS)}, got {args.arms!r}")
    from tvm_sparseconv.targets import resolve_target, target_folder_name

    result = {"machine": target_folder_name(resolve_target(args.target)), "trials": args.trials,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": []}
    for r in range(args.rounds):
        order = arms if r % 2 == 0 else arms[::-1]
        round_ = {}
        for builder in order:
            out = subprocess.run([sys.executable, __file__, "--child", builder, "--target", args.target,
                                  "--trials", str(args.trials)], capture_output=True, text=True, check=True)
            round_[builder] = json.loads(out.stdout.strip().splitlines()[-1])
            later = [row["tuning_s"] for row in round_[builder][1:]]
            print(f"round {r + 1} {builder:<11} per workload: " + " ".join(f"{row['tuning_s']:.1f}"
                  for row in round_[builder]) + f" s (later ones mean {sum(later) / len(later):.1f} s)", flush=True)
        result["rounds"].append(round_)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
