"""scripts/pruned_resnet50.py end to end (at 32x32, so that it is quick): a magnitude-pruned Keras
ResNet-50 sparsified, its predictions equal to the pruned dense model's, and report.py's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_pruned_resnet50_sparsified_predicts_the_same_and_reports(tmp_path):
    out = tmp_path / "pruned-resnet50.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "pruned_resnet50.py"), "--image-size", "32", "--repeats", "2",
           "--layer-repeats", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["conv_layers"] == len(res["layers"]) == 53
    assert all(abs(lay["density"] - 0.1) < 0.01 for lay in res["layers"])  # pruned per layer to 90%
    assert res["max_relative_difference"] <= 1e-4 and res["same_top1"]
    assert res["sparse_layers"] == sum(lay["chosen"] == "sparse" for lay in res["layers"])
    assert res["model_ms"]["dense"] > 0 and res["model_ms"]["sparsified"] > 0

    report = load_script("scripts/report.py")
    summary, full = report.pruned_model_markdown(out, res)
    assert "whole pruned ResNet-50" in summary and f"{res['sparse_layers']} of 53" in summary
    assert full.count("\n| conv") == 53
