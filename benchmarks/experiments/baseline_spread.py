"""How much the whole-network comparison moves between runs of the same benchmark.

    python benchmarks/experiments/baseline_spread.py benchmarks/experiments/network_runs-nvidia-h200-2026-12-01 \\
        --json benchmarks/experiments/baseline_spread-nvidia-h200-2026-12-01.json

Reads every `scripts/bench.py` results JSON in a folder (or the files given), and prints, per
network set, each run's totals (ours with the per-layer choice, all-dense fp32, all-dense TF32) and
the per-layer spread (min / median / max over the runs) of each contender. Written because cuDNN's
TF32 time of the whole batch-1 network moved by half between runs minutes apart while ours did
not: a single run's ratio is not the number to quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tvm_sparseconv.network_time import network_times  # noqa: E402

CONTENDERS = ("sparse", "cudnn_fp32", "cudnn_tf32")


def load(paths: list[Path]) -> dict[str, dict]:
    files = []
    for p in paths:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return {f.stem: json.loads(f.read_text()) for f in files}


def spread(runs: dict[str, dict]) -> dict:
    out: dict = {"networks": {}, "layers": {}}
    for name, res in runs.items():
        for t in network_times(res["points"], "gpu"):
            if t.missing:
                continue
            d = t.as_dict()
            out["networks"].setdefault(t.network, []).append({
                "run": name, "date": res.get("date"), "ours_ms": t.chosen_fp32 * 1e3,
                "all_fp32_ms": t.dense_fp32 * 1e3, "all_tf32_ms": t.dense_default * 1e3,
                "vs_tf32": d["fp32_chosen_vs_dense_default"], "vs_fp32": d["speedup_fp32"]})
        for p in res["points"]:
            if "seconds" not in p:
                continue
            layer = out["layers"].setdefault(p["sweep"], {}).setdefault(p["problem"], {c: [] for c in CONTENDERS})
            for c in CONTENDERS:
                if isinstance(p["seconds"].get(c), float):
                    layer[c].append(p["seconds"][c] * 1e6)
    for sweep in out["layers"].values():
        for name, layer in sweep.items():
            sweep[name] = {c: {"min_us": min(v), "median_us": statistics.median(v), "max_us": max(v), "runs": len(v)}
                           for c, v in layer.items() if v}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", type=Path, nargs="+", help="results JSONs, or folders of them")
    ap.add_argument("--json", type=Path, default=None, help="write the spread here")
    args = ap.parse_args(argv)
    result = spread(load(args.paths))
    for net, rows in sorted(result["networks"].items()):
        print(f"\n{net}")
        print(f"  {'run':40s} {'ours ms':>8s} {'all fp32':>9s} {'all tf32':>9s} {'vs tf32':>8s}")
        for r in rows:
            print(f"  {r['run']:40s} {r['ours_ms']:8.3f} {r['all_fp32_ms']:9.3f} {r['all_tf32_ms']:9.3f} {r['vs_tf32']:8.2f}")
        ratios = [r["vs_tf32"] for r in rows]
        print(f"  vs all tf32: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}")
        layers = result["layers"].get(net, {})
        wide = sorted(layers.items(), key=lambda kv: -(kv[1]["cudnn_tf32"]["max_us"] / kv[1]["cudnn_tf32"]["min_us"]))
        for name, s in wide[:5]:
            print(f"  widest tf32 spread: {name}: " + ", ".join(
                f"{c} {s[c]['min_us']:.1f}-{s[c]['max_us']:.1f} us" for c in CONTENDERS if c in s))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
