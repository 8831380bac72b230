"""`scripts/tune.py --algorithm cpu-register-reuse`: the generated algorithm's tiles measured on
this CPU (real builds, real timing), the winner recorded and then used by compile()."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_sparseconv as tsc
from tvm_sparseconv import targets, tile_records
from tvm_sparseconv.workloads import workload_set

from conftest import reference_conv, rel_err, run_poisoned

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tune  # noqa: E402

TILES = ["l8b1", "l8b4h"]


def test_tune_py_measures_the_tiles_records_the_winner_and_compile_uses_it(tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    folder = root / targets.target_folder_name(targets.host_cpu_target())
    summary = tmp_path / "summary.json"
    argv = ["--algorithm", "cpu-register-reuse", "--workloads", "tiny", "--tiles", ",".join(TILES),
            "--out", str(folder), "--summary-json", str(summary), "--build-workers", "2"]
    assert tune.main(argv) == 0
    rows = json.loads(summary.read_text())["workloads"]
    assert [r["problem"] for r in rows] == [p.name for p in workload_set("tiny")]
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    for row, p in zip(rows, workload_set("tiny")):
        assert set(row["tiles"]) <= set(TILES) and row["tiles"], row
        for t in row["tiles"].values():
            assert t["relative_error"] <= 1e-5 and t["seconds"] > 0, row
        best = min(row["tiles"], key=lambda t: row["tiles"][t]["seconds"])
        assert row["best"] == best
        kernel = p.sparse_kernel()
        op = tsc.compile(kernel, p.input_shape, strides=p.strides, padding=p.padding, target="cpu")
        if row["recorded"]:  # faster than the layer's scheduled choice in the same run
            assert row["recorded"] == best and row["tiles"][best]["seconds"] <= row["scheduled"]["seconds"]
            record = tile_records.find(folder, "cpu-register-reuse", op.workload, kernel.nnz)
            assert record["tile"] == best and record["emitter_version"] is not None
            assert op.schedule_source == f"tuned:cpu-register-reuse {best}@{folder.name}"
        else:
            assert "slower than" in row["why_not"], row
        x = np.random.default_rng(3).standard_normal(p.input_shape).astype(np.float32)
        ref = reference_conv(x, kernel.to_dense(), p.strides, p.padding)
        assert rel_err(run_poisoned(op, x), ref) < 1e-5
    # measured already: skipped unless --force
    assert tune.main(argv[:-4] + ["--summary-json", str(tmp_path / "again.json")]) == 0
    assert not (tmp_path / "again.json").exists() or not json.loads((tmp_path / "again.json").read_text())["workloads"]


def test_tune_py_refuses_unknown_tiles_per_layer(tmp_path, capsys):
    argv = ["--algorithm", "cpu-register-reuse", "--workloads", "tiny_same", "--tiles", "l8b1,nosuch",
            "--out", str(tmp_path / "cpu-x"), "--summary-json", str(tmp_path / "s.json")]
    assert tune.main(argv) == 1
    row = json.loads((tmp_path / "s.json").read_text())["workloads"][0]
    assert "unknown cpu-register-reuse tiles ['nosuch']" in row["error"]
    assert not tile_records.path_for(tmp_path / "cpu-x", "cpu-register-reuse").exists()


def test_an_older_or_measured_record_does_not_stay_over_a_new_one():
    shape = {"input_shape": [1, 8, 8, 4]}
    new = {"shape": shape, "tile": "a", "seconds": 2e-6, "nonzeros": 100, "emitter_version": 3}
    old = {"shape": shape, "tile": "b", "seconds": 1e-6, "nonzeros": 110, "emitter_version": 3}
    assert tile_records.keeps(old, new, measured={"a"})  # faster, same code, its tile not measured now
    assert not tile_records.keeps(old, new, measured={"a", "b"})  # measured now: the run decides
    assert not tile_records.keeps({**old, "emitter_version": 2}, new, measured={"a"})  # older code
    assert not tile_records.keeps({**old, "seconds": 3e-6}, new, measured={"a"})  # slower
    assert not tile_records.keeps({**old, "nonzeros": 400}, new, measured={"a"})  # another density
    assert not tile_records.keeps(None, new, measured={"a"})


def test_the_default_search_is_the_tiles_that_won_somewhere_and_the_layers_default(tmp_path, monkeypatch):
    from tvm_sparseconv import algorithms, tile_tuning

    p = workload_set("resnet50_conv4_3x3_b32")[0]
    kernel, wl = tile_tuning.generated_workload(p, "register-reuse", "cuda")
    alg = algorithms.by_name("register-reuse")
    won = tile_tuning.winning_tiles("register-reuse")
    assert won and set(won) < set(alg.tiles())  # from the committed records: fewer than all
    default = tile_tuning.candidate_tiles("register-reuse", wl)
    assert set(default) <= set(won) | {alg.default_tile(wl)} and all(alg.fits(wl, alg.tiles()[t]) for t in default)
    everything = tile_tuning.candidate_tiles("register-reuse", wl, ["all"])
    assert set(default) < set(everything) == {t for t, tile in alg.tiles().items() if alg.fits(wl, tile)}
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(tmp_path))  # no records anywhere: every tile
    assert tile_tuning.candidate_tiles("register-reuse", wl) == everything
    with pytest.raises(ValueError, match="unknown register-reuse tiles"):
        tile_tuning.candidate_tiles("register-reuse", wl, ["g32p64x4", "nosuch"])
