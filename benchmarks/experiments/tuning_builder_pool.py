#!/usr/bin/env python
"""Tuning time per workload with MetaSchedule's LocalBuilder against the library's pooled builder.

  python benchmarks/experiments/tuning_builder_pool.py [--target llvm] [--trials 16] [--rounds 2]

LocalBuilder starts new Python processes (importing TVM) for every batch and for a sanity check
per workload; `tuning_builder.pooled_builder` keeps one pool per process. Each round tunes the
`tiny` workloads one after another in a fresh process per builder, alternating which builder goes
first; the per-workload tuning seconds and MetaSchedule's profiler phases go to the JSON beside
this script. The first workload of a process also pays one-off imports, so the later ones are the
comparison of builders. `tuning_builder_pool-before-intrin-skip.json` is the same run from before
tuning stopped importing `tvm.s_tir.tensor_intrin` and kept its runner across workloads (first
workloads 53-58 s there; both arms use the kept runner now).
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


def one_process(target: str, trials: int, pooled: bool) -> list[dict]:
    from tvm_sparseconv.targets import resolve_target
    from tvm_sparseconv.tuning import tune_problem
    from tvm_sparseconv.workloads import workload_set

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
    ap.add_argument("--child", choices=["local", "pooled"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tuning_builder_pool.json"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_process(args.target, args.trials, args.child == "pooled")))
        return 0

    from tvm_sparseconv.targets import resolve_target, target_folder_name

    result = {"machine": target_folder_name(resolve_target(args.target)), "trials": args.trials,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": []}
    for r in range(args.rounds):
        order = ["local", "pooled"] if r % 2 == 0 else ["pooled", "local"]
        round_ = {}
        for builder in order:
            out = subprocess.run([sys.executable, __file__, "--child", builder, "--target", args.target,
                                  "--trials", str(args.trials)], capture_output=True, text=True, check=True)
            round_[builder] = json.loads(out.stdout.strip().splitlines()[-1])
            later = [row["tuning_s"] for row in round_[builder][1:]]
            print(f"round {r + 1} {builder:<7} per workload: " + " ".join(f"{row['tuning_s']:.1f}"
                  for row in round_[builder]) + f" s (later ones mean {sum(later) / len(later):.1f} s)", flush=True)
        result["rounds"].append(round_)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
