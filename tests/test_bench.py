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
    """(--precision tf32 on a CPU: no TF32 algorithm runs there, so TF32 mode is the fp32 choice.)"""
    out = tmp_path / "cpu.json"
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--repeats", "2", "--baselines", "tf_conv2d", "--out", str(out),
               "--precision", "tf32")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert [p["problem"] for p in points] == ["tiny_same", "tiny_stride"]
    for p in points:
        assert p["correct"] and p["relative_error"] <= 1e-5
        assert set(p["seconds"]) == {"sparse", "tf_conv2d"} and p["seconds"]["tf_conv2d"] > 0
        assert p["count"] == 1
        mode = p["tf32_mode"]
        assert mode["correct"] and (mode["algorithm"], mode["seconds"]) == (p["algorithm"], p["seconds"]["sparse"])
    assert "tf32 mode" in r.stdout


def test_bench_refuses_an_unknown_baseline_by_name():
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--baselines", "cudnn_fp32")
    assert r.returncode != 0
    assert "unknown baselines ['cudnn_fp32']" in r.stderr and "tf_conv2d" in r.stderr


def test_bench_compiles_every_point_in_parallel_first_then_times_them(tmp_path):
    """--compile-only compiles each point in worker processes into the module cache and stops (no
    JSON); --compile-workers then times them, taking the modules from that cache."""
    env = dict(__import__("os").environ, TVM_SPARSECONV_CACHE=str(tmp_path / "cache"))
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--compile-only", "--compile-workers", "2", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "compiled 2 of 2 layers" in r.stdout
    assert len(list((tmp_path / "cache").rglob("*.so"))) == 2
    out = tmp_path / "cpu.json"
    r = _bench("--sweeps", "tiny", "--device", "cpu", "--repeats", "2", "--no-baselines", "--compile-workers", "2",
               "--out", str(out), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["compile_workers"] == 2
    assert all(p["correct"] and p["compile_s"] > 0 for p in res["points"])
