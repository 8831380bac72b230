"""scripts/bench.py end to end on this CPU: a small set, a chosen baseline, bad baseline names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args], capture_output=True,
                          text=True, timeout=900, cwd=ROOT, **kw)


def test_bench_times_only_the_named_baselines_and_checks_every_point(tmp_path):
    out = tmp_path / "cpu.json"
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--repeats", "2", "--baselines", "tf_conv2d", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert [p["problem"] for p in points] == ["tiny_same", "tiny_stride"]
    for p in points:
        assert p["correct"] and p["relative_error"] <= 1e-5
        assert set(p["seconds"]) == {"sparse", "tf_conv2d"} and p["seconds"]["tf_conv2d"] > 0
        assert p["count"] == 1


def test_bench_refuses_an_unknown_baseline_by_name():
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--baselines", "cudnn_fp32")
    assert r.returncode != 0
    assert "unknown baselines ['cudnn_fp32']" in r.stderr and "tf_conv2d" in r.stderr
