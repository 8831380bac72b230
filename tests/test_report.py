"""scripts/report.py's per-device summary, on a committed results JSON."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
report = load_script("scripts/report.py")

RESULTS = ROOT / "benchmarks" / "results" / "nvidia-h100-resnet50-network.json"


def _tf32_mode_wins(res: dict) -> str:
    _, summary = report.device_markdown("x", res, "plots", set(), "")
    header, *rows = [line for line in summary.splitlines() if line.startswith("| ")]
    col = header.split(" | ").index("TF32 mode faster than cudnn_tf32")
    (row,) = [r for r in rows if r.startswith("| resnet50_network_s90_b32_g8 ")]
    return row.split(" | ")[col]


def test_the_summary_counts_the_tf32_mode_wins_over_cudnn_tf32():
    """bench.py --precision tf32 points: compile(precision="tf32")'s choice against cuDNN TF32, a
    wrong result not counted as a win."""
    res = json.loads(RESULTS.read_text())
    # (the file holds the batch-1 networks too, from stop 52; the row read is batch 32's)
    points = [p for p in res["points"] if "tf32_mode" in p and p["sweep"] == "resnet50_network_s90_b32_g8"]
    wins = [p for p in points if p["tf32_mode"]["correct"]
            and p["tf32_mode"]["seconds"] < p["seconds"]["cudnn_tf32"]]
    assert wins and _tf32_mode_wins(res) == f"{len(wins)}/{len(points)}"

    wrong = copy.deepcopy(res)
    next(p for p in wrong["points"] if p["problem"] == wins[0]["problem"])["tf32_mode"]["correct"] = False
    assert _tf32_mode_wins(wrong) == f"{len(wins) - 1}/{len(points)}"
    assert re.fullmatch(r"\d+/\d+", _tf32_mode_wins(res))


def test_the_plots_draw_tf32_mode_beside_fp32_and_the_baselines():
    """A --precision tf32 run's plot has our TF32-mode line (the figure the network's 1.2x is
    about) beside our fp32 line and cuDNN's; a TF32-mode result that was wrong drops that line."""
    res = json.loads(RESULTS.read_text())
    pts = sorted((p for p in res["points"] if p["sweep"] == "resnet50_network_s90_b32_g8"), key=lambda p: p["value"])
    series = {label: ms for label, ms, _ in report.plotted_series(pts)}
    assert set(series) == {"tvm_sparseconv", "tvm_sparseconv, TF32 mode", "cudnn_fp32", "cudnn_tf32"}
    assert series["tvm_sparseconv, TF32 mode"] == [p["tf32_mode"]["seconds"] * 1e3 for p in pts]
    assert series["tvm_sparseconv"] == [p["seconds"]["sparse"] * 1e3 for p in pts]

    wrong = copy.deepcopy(pts)
    wrong[3]["tf32_mode"]["correct"] = False
    assert "tvm_sparseconv, TF32 mode" not in {label for label, _, _ in report.plotted_series(wrong)}
