"""Per-layer comparison of `scripts/bench.py` runs of one network set, as a markdown table (no GPU needed).

    python benchmarks/experiments/network_runs.py resnet50_network_s90_b1_g8 \\
        stop57=benchmarks/experiments/network-b1-g8-h100-stop57-first-run.json \\
        stop58=benchmarks/results/nvidia-h100-resnet50-network.json

Each run is LABEL=PATH (a bench.py --out JSON or a results file; its points of the set are used).
Per layer and run: the time in TF32 mode with its algorithm (fp32 sparse where the run has no TF32
mode), cuDNN TF32 and the ratio; last, the network totals with the per-layer choice
(`tvm_sparseconv.network_time`, as report.py gives them) and the layers at 1.3x or more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvm_sparseconv.network_time import network_times
from tvm_sparseconv.workloads import NETWORKS

#: the issue's per-layer target at batch 1: each layer this much faster than cuDNN TF32
LAYER_TARGET = 1.3


def _sparse_us(p: dict) -> tuple[float, str]:
    """The layer's sparse time (us) in TF32 mode, else fp32, and the algorithm that ran."""
    mode = p.get("tf32_mode") or {}
    if mode.get("correct", True) and "seconds" in mode:
        return mode["seconds"] * 1e6, mode.get("algorithm", "?")
    return p["seconds"]["sparse"] * 1e6, p.get("algorithm", "?")


def table(network: str, runs: dict[str, list[dict]]) -> str:
    """Markdown rows per layer of `network` across `runs` (label -> that set's points), then totals."""
    labels = list(runs)
    head = ["layer", "x"] + [f"{lab}: {col}" for lab in labels for col in ("sparse us", "cuDNN TF32 us", "vs TF32")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    at_target = dict.fromkeys(labels, 0)
    for problem in NETWORKS[network]:
        cells = [problem.name.removeprefix("resnet50_"), str(problem.count)]
        for lab in labels:
            p = next((q for q in runs[lab] if q["problem"] == problem.name), None)
            if p is None:
                cells += ["-", "-", "-"]
                continue
            us, algorithm = _sparse_us(p)
            dense = p["seconds"]["cudnn_tf32"] * 1e6
            at_target[lab] += dense / us >= LAYER_TARGET
            cells += [f"{us:.1f} ({algorithm})", f"{dense:.1f}", f"{dense / us:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for lab in labels:
        t = next(t for t in network_times(runs[lab], "gpu") if t.network == network)
        best = t.chosen_tf32_mode if t.chosen_tf32_mode else t.chosen_default
        lines.append(f"- {lab}: per-layer choice {best * 1e3:.3f} ms against all-dense cuDNN TF32 "
                     f"{t.dense_default * 1e3:.3f} ms ({t.dense_default / best:.2f}x); "
                     f"{at_target[lab]} of {len(NETWORKS[network])} shapes at {LAYER_TARGET}x or more")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("network", choices=sorted(NETWORKS), help="the network workload set")
    ap.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="bench.py JSONs (or results files) to compare")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"expected LABEL=PATH, got {spec!r}")
        points = [p for p in json.loads(Path(path).read_text())["points"] if p.get("sweep") == args.network]
        if not points:
            ap.error(f"{path} has no points of {args.network}")
        runs[label] = points
    print(table(args.network, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
