"""The pruned-model workflow end to end, through scripts/prune_and_sparsify.py in its own process.

With tensorflow-model-optimization: a small CNN trained on scikit-learn's digits, pruned to 90%
by tfmot (tf_keras, TF_USE_LEGACY_KERAS=1), stripped, sparsified, saved and loaded: the
predictions must equal the stripped dense model's. Without tfmot (Keras 3): pruned by magnitude.
Both also export the sparsified model as a SavedModel and serve it in a fresh process (issue 14).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_TFMOT = all(importlib.util.find_spec(m) for m in ("tensorflow_model_optimization", "tf_keras"))


def run_example(tmp_path, *extra) -> dict:
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "prune_and_sparsify.py"), "--epochs", "2",
           "--prune-epochs", "1", "--upsample", "2", "--json", str(out), "--export", str(tmp_path / "exported"),
           *extra]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def check(result: dict) -> None:
    for name, zeros in result["zeros"].items():
        assert 0.85 <= zeros <= 0.95, f"{name}: {zeros:.1%} zeros"
    assert result["max_relative_difference"] <= 1e-5
    assert result["after_save_load"] <= 1e-6
    acc = result["accuracy"]
    assert abs(acc["sparsified"] - acc["pruned"]) <= 1 / 400  # at most one of ~450 test digits flips
    assert {d["name"] for d in result["layers"]} == {"conv1", "conv2", "conv3"}
    served = result["served"]
    assert served["max_relative_difference"] <= 1e-5 and served["py_function_ops"] == 0
    assert served["tvm_ops"] == sum(d["chosen"] == "sparse" for d in result["layers"])


@pytest.mark.skipif(not HAVE_TFMOT, reason="tfmot not installed (pip install --no-deps -r requirements-tfmot.txt)")
def test_tfmot_pruned_model_sparsified_predicts_the_same(tmp_path):
    result = run_example(tmp_path)
    assert result["pruning"] == "tfmot" and result["keras"] == "tf_keras"
    check(result)


def test_magnitude_pruned_keras3_model_sparsified_predicts_the_same(tmp_path):
    result = run_example(tmp_path, "--no-tfmot", "--convert-all")
    assert result["pruning"] == "magnitude" and result["keras"] == "keras"
    check(result)
    assert result["served"]["tvm_ops"] == 3  # every layer sparse, each one op in the served graph
