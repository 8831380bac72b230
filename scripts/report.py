#!/usr/bin/env python
"""Turn benchmarks/results/<device>.json into plots and markdown tables.

  python scripts/report.py                 # every device in benchmarks/results/

Writes benchmarks/plots/<device>/<sweep>.png (time against the swept parameter, ours against every
baseline), benchmarks/RESULTS.md (every point: speed-ups, useful TFLOP/s, share of the measured
fp32 ceiling, whether the issue's target holds, break-even nonzero ratios), the summary between
the `results` markers in README.md, and whole-network totals between its `network` markers.
Nothing here is typed by hand: rerun after every benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tvm_sparseconv.network_time import markdown_with_calls  # noqa: E402
SWEEP_ORDER = ["headline", "kernel_size", "in_channels", "out_channels", "density", "image_size"]
SWEEP_LABEL = {
    "kernel_size": "kernel size (1x256x512x3 input, 64 filters)",
    "in_channels": "input channels (11x11 kernels, 3 filters)",
    "out_channels": "output channels (11x11x3 kernels)",
    "density": "nonzero ratio (1x256x512x32 input, 11x11x32x64 kernel)",
    "image_size": "image size (11x11x3x64 kernel)",
}
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"
#: the README's lead figure: whole-network totals of every results file that has them
HEAD_START, HEAD_END = "<!-- network:start -->", "<!-- network:end -->"


def target_check(p: dict) -> str:
    """Whether the issues' per-point targets hold ('' where none applies)."""
    s = p["seconds"]
    sp = s["sparse"]
    fp32, tf32, tf = s.get("cudnn_fp32"), s.get("cudnn_tf32"), s.get("tf_conv2d")
    ok = lambda c: "yes" if c else "**no**"  # noqa: E731
    if isinstance(fp32, float):
        if p["sweep"] == "headline":
            return f"10x fp32: {ok(fp32 / sp >= 10)}, >= TF32: {ok(tf32 / sp >= 1)}"
        if p["sweep"] in SWEEP_LABEL and (p["sweep"] != "density" or abs(p["value"] - 0.1) < 1e-9):
            return f"> fp32: {ok(fp32 > sp)}, > TF32: {ok(tf32 > sp)}"
        if p["sweep"] == "resnet50_3x3_b1":
            return f"1.5x fp32: {ok(fp32 / sp >= 1.5)}"
    if isinstance(tf, float) and p["sweep"] == "headline":
        return f"4x tf.nn.conv2d: {ok(tf / sp >= 4)}"
    return ""


def baselines_of(points: list[dict]) -> list[str]:
    names = []
    for p in points:
        for k, v in p.get("seconds", {}).items():
            if k != "sparse" and isinstance(v, float) and k not in names:
                names.append(k)
    return names


def break_even(points: list[dict], base: str) -> str:
    """Nonzero ratio where the sparse kernel stops beating `base` (log-interpolated)."""
    pts = sorted((p["value"], p["seconds"][base] / p["seconds"]["sparse"]) for p in points
                 if isinstance(p["seconds"].get(base), float))
    if not pts:
        return "n/a"
    if all(r > 1 for _, r in pts):
        return f"> {pts[-1][0]:g} (faster at every ratio measured)"
    if all(r <= 1 for _, r in pts):
        return f"< {pts[0][0]:g} (slower at every ratio measured)"
    for (d0, r0), (d1, r1) in zip(pts, pts[1:]):
        if r0 > 1 >= r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1)) if r0 != r1 else 0
            return f"{math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0))):.2f}"
    return "n/a"


def _gflops(p: dict) -> str:
    g = p["useful_tflops"] * 1e3
    return f"{g:.0f}" if g >= 100 else f"{g:.1f}"


def sweeps_of(points: list[dict]) -> list[str]:
    present = {p["sweep"] for p in points}
    return [s for s in SWEEP_ORDER if s in present] + sorted(present - set(SWEEP_ORDER))


def plotted_series(pts: list[dict]) -> list[tuple[str, list[float], dict]]:
    """(label, ms per point, line style) of each contender measured at every point: ours, ours in
    TF32 mode (`bench.py --precision tf32`: what `compile(precision="tf32")` picked; only where
    every point of it was correct), each baseline."""
    series = []
    for name in ["sparse", "tf32_mode"] + baselines_of(pts):
        ys = ([p["tf32_mode"]["seconds"] if p.get("tf32_mode", {}).get("correct") else None for p in pts]
              if name == "tf32_mode" else [p["seconds"].get(name) for p in pts])
        if not all(isinstance(y, float) for y in ys):
            continue
        label = {"sparse": "tvm_sparseconv", "tf32_mode": "tvm_sparseconv, TF32 mode"}.get(name, name)
        style = (dict(lw=2.5, color="black", marker="o") if name == "sparse"
                 else dict(lw=2.5, color="firebrick", marker="o", ls="--") if name == "tf32_mode"
                 else dict(lw=1.2, marker="."))
        series.append((label, [y * 1e3 for y in ys], style))
    return series


def plot(device: str, sweep: str, points: list[dict], out_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((p for p in points if "seconds" in p), key=lambda p: p["value"])
    if len(pts) < 2:
        return None
    resnet = sweep.startswith("resnet50")
    xs = list(range(len(pts))) if resnet else [p["value"] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label, ms, style in plotted_series(pts):
        ax.plot(xs, ms, label=label, **style)
    ax.set_yscale("log")
    if sweep in ("density", "image_size", "in_channels", "out_channels"):
        ax.set_xscale("log")
    if resnet:
        ax.set_xticks(xs, [p["problem"].replace("resnet50_", "").rsplit("_b", 1)[0] for p in pts],
                      rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(SWEEP_LABEL.get(sweep, "layer" if resnet else sweep))
    ax.set_ylabel("time per call (ms, log)")
    dens = "" if sweep == "density" else " at 10% nonzeros"
    ax.set_title(f"{sweep}{dens} on {device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sweep}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def device_markdown(name: str, res: dict, plots_rel: str, plotted: set[str], networks: str) -> tuple[str, str]:
    """(full tables, short summary) for one device's results (`networks`: its network totals)."""
    points = [p for p in res["points"] if "seconds" in p]
    ceiling = res.get("ceilings", {}).get("fp32_gemm_tflops")
    bases = baselines_of(points)
    head = (f"### {res['device']} (`benchmarks/results/{name}.json`)\n\n"
            f"Latest run {res['date']} ({len(res.get('runs', []))} runs of `scripts/bench.py`, each listed in the JSON); versions {res['versions']}"
            + (f"; driver {res['driver']}" if res.get("driver") else "")
            + (f"; measured fp32 GEMM ceiling {ceiling:.1f} TFLOP/s" if ceiling else "; no ceiling measured") + ".\n")
    if networks:
        head += ("\nWhole ResNet-50, every convolution (count x time per shape, one batch), with the per-layer "
                 "choice of sparse or dense:\n\n" + networks + "\nPer layer:\n")
    full = [head]
    # bench.py --precision tf32: compile(precision="tf32")'s choice against cuDNN TF32 too
    tf32_mode = "cudnn_tf32" in bases and any("tf32_mode" in p for p in points)
    extra = ["TF32 mode faster than cudnn_tf32"] if tf32_mode else []
    summary = [head, "| sweep | points | " + " | ".join([*(f"faster than {b}" for b in bases), *extra])
               + " | best useful GFLOP/s |", "|---" * (3 + len(bases) + len(extra)) + "|"]
    for sweep in sweeps_of(points):
        pts = sorted((p for p in points if p["sweep"] == sweep), key=lambda p: p["value"])
        full.append(f"\n#### {sweep}\n")
        if sweep in plotted:
            full.append(f"![{sweep}]({plots_rel}/{sweep}.png)\n")
        cols = ["point", "sparse ms", "algorithm"] + [f"x vs {b}" for b in bases] + [
            "useful GFLOP/s", "% fp32 ceiling", "rel. err", "tuned", "each algorithm ms", "target"]
        full.append("| " + " | ".join(cols) + " |")
        full.append("|---" * len(cols) + "|")
        for p in pts:
            s = p["seconds"]
            speed = [f"{s[b] / s['sparse']:.2f}" if isinstance(s.get(b), float) else "n/a" for b in bases]
            share = f"{100 * p['useful_tflops'] / ceiling:.0f}%" if ceiling else "n/a"
            each = ", ".join(f"{n} {a['seconds'] * 1e3:.3f}" + ("" if a["correct"] else " (wrong)")
                             for n, a in p.get("algorithms", {}).items())
            if "tf32_mode" in p:  # bench.py --precision tf32: compile()'s choice with TF32 allowed
                t = p["tf32_mode"]
                each += (", " if each else "") + (f"TF32 mode: {t['algorithm']} {t['seconds'] * 1e3:.3f}"
                                                  + ("" if t["correct"] else " (wrong)"))
            full.append(f"| {p['problem']} | {s['sparse'] * 1e3:.3f} | {p.get('algorithm', 'ell-gather')} | "
                        + " | ".join(speed) + f" | {_gflops(p)} | {share} | {p['relative_error']:.1e} | "
                        f"{'yes' if p['tuned'] else 'no'} | {each} | {target_check(p)} |")
        # counted over the points that measured the baseline (a sweep re-run with fewer baselines
        # says "n/a" for the others, not "slower")
        measured = {b: [p for p in pts if isinstance(p["seconds"].get(b), float)] for b in bases}
        wins = [f"{sum(p['seconds'][b] > p['seconds']['sparse'] for p in measured[b])}/{len(measured[b])}"
                if measured[b] else "n/a" for b in bases]
        if tf32_mode:
            both = [p for p in pts if "tf32_mode" in p and isinstance(p["seconds"].get("cudnn_tf32"), float)]
            wins.append(f"{sum(p['tf32_mode']['correct'] and p['tf32_mode']['seconds'] < p['seconds']['cudnn_tf32'] for p in both)}"
                        f"/{len(both)}" if both else "n/a")
        summary.append(f"| {sweep} | {len(pts)} | " + " | ".join(wins) + f" | {_gflops(max(pts, key=lambda p: p['useful_tflops']))} |")
    dens = [p for p in points if p["sweep"] == "density"]
    if dens:
        line = "\nBreak-even nonzero ratio (density sweep): " + "; ".join(f"{b}: {break_even(dens, b)}" for b in bases) + ".\n"
        full.append(line)
        summary.append(line)
    return "\n".join(full) + "\n", "\n".join(summary) + "\n"


def network_markdown(points: list[dict]) -> str:
    device = "gpu" if any(isinstance(p["seconds"].get("cudnn_fp32"), float) for p in points) else "cpu"
    return markdown_with_calls(points, device)


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        return text
    pre, rest = text.split(start, 1)
    _, post = rest.split(end, 1)
    return pre + start + "\n" + body + end + post


def demo_markdown(path: Path, d: dict) -> str:
    sec = d["seconds"]
    return (f"### `make demo` on {d['machine']['cpu']} ({d['machine']['cores']} cores), "
            f"`benchmarks/results/{path.name}`\n\n"
            f"Headline case ({d['nnz']} nonzeros), {d['date']}, schedule `{d['schedule']}`: "
            f"`tf.nn.conv2d` {sec['tf_conv2d'] * 1e3:.1f} ms, tvm_sparseconv {sec['sparse'] * 1e3:.1f} ms "
            f"(**{d['speedup']:.2f}x**, whole call on TF tensors, median of {d['repeats']}); relative error "
            f"{d['relative_error']:.1e}; conversion {sec['convert'] * 1e3:.0f} ms and compilation "
            f"{sec['compile']:.1f} s once, not in the times.\n")


def pruned_model_markdown(path: Path, d: dict) -> tuple[str, str]:
    """(README summary, RESULTS.md section with the per-layer table) of a `pruned_resnet50.py` run."""
    ms_, conv = d["model_ms"], d["conv_ms"]
    head = (f"### A whole pruned ResNet-50 in TensorFlow on {d['cpu']} ({d['cores']} cores), "
            f"`benchmarks/results/{path.name}`\n\n"
            f"`{d['model']}` at {'x'.join(map(str, d['input_shape']))}, every Conv2D pruned to "
            f"{d['sparsity']:.0%} zeros, {d['date']} (`{d['command']}`): dense {ms_['dense']:.1f} ms, "
            f"sparsified {ms_['sparsified']:.1f} ms (**{ms_['dense'] / ms_['sparsified']:.2f}x**, whole model "
            f"in `tf.function`, median of {ms_['repeats']}); {d['sparse_layers']} of {d['conv_layers']} "
            f"convolutions run sparse (`sparsify` timed each; the convolutions alone {conv['dense']:.1f} -> "
            f"{conv['chosen']:.1f} ms); predictions within {d['max_relative_difference']:.1e} of the dense "
            f"pruned model.\n")
    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    rows = ["| layer | kernel | input | dense ms | sparse ms | speed-up | tuned | chosen |",
            "|---|---|---|---|---|---|---|---|"]
    for lay in d["layers"]:
        speedup = "-" if lay["speedup"] is None else f"{lay['speedup']:.2f}x"
        tuned = "-" if lay["tuned"] is None else ("yes" if lay["tuned"] else "no")
        shape_in = "x".join("?" if v is None else str(v) for v in lay["input_shape"] or ())
        rows.append(f"| {lay['name']} | {'x'.join(map(str, lay['kernel_shape']))} | {shape_in} | "
                    f"{ms(lay['dense_ms'])} | {ms(lay['sparse_ms'])} | {speedup} | {tuned} | {lay['chosen']} |")
    return head, head.replace("### ", "## ", 1) + "\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md's summary")
    args = ap.parse_args(argv)
    fulls, summaries, heads = [], [], []
    for path in sorted(args.results.glob("*.json")):
        res = json.loads(path.read_text())
        if res.get("script") == "scripts/demo.py":
            summaries.append(demo_markdown(path, res))
            continue
        if res.get("script") == "scripts/pruned_resnet50.py":
            summary, full = pruned_model_markdown(path, res)
            summaries.append(summary)
            fulls.append(full)
            continue
        if "points" not in res:
            continue
        name = path.stem
        plotted = {
            sweep for sweep in sweeps_of([p for p in res["points"] if "seconds" in p])
            if plot(res["device"], sweep, [p for p in res["points"] if p["sweep"] == sweep],
                    ROOT / "benchmarks" / "plots" / name)
        }
        networks = network_markdown([p for p in res["points"] if "seconds" in p])
        full, summary = device_markdown(name, res, f"plots/{name}", plotted, networks)
        if networks:
            heads.append(f"{res['device']}, {res['date']} (`benchmarks/results/{name}.json`):\n\n{networks}")
        fulls.append(full)
        summaries.append(summary.replace("](plots/", "](benchmarks/plots/"))
        print(f"{name}: {len(res['points'])} points")
    (ROOT / "benchmarks" / "RESULTS.md").write_text(
        "# Benchmark results\n\nGenerated by `python scripts/report.py` from `benchmarks/results/*.json`.\n\n"
        + "\n".join(fulls))
    if not args.no_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        text = _replace_between(text, MARK_START, MARK_END, "\n".join(summaries))
        readme.write_text(_replace_between(text, HEAD_START, HEAD_END, "\n".join(heads)))
    print("wrote benchmarks/RESULTS.md and plots" + ("" if args.no_readme else ", README summary"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
