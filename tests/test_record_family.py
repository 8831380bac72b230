"""Tuning records that travel between CPU models of one ISA family (issue 15, part 2).

A tiny record is tuned for this CPU (real MetaSchedule, 8 trials), then its folder is copied under
the name and `mcpu` of another CPU: of this CPU's family it is used (compiled for this CPU, checked
against float64 once, the verdict kept in the disk cache); of another family it is not.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import tvm_sparseconv as tsc
import tvm

from tvm_sparseconv import build, module_cache, targets, tuning_records, verification
from tvm_sparseconv.tir_build import compile_tir
from tvm_sparseconv.tuning import tune_problem
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import TINY, Problem

from conftest import reference_conv, rel_err, run_poisoned

PROBLEM = TINY[0]
HOST = targets.host_cpu_target()
HOST_MCPU = str(HOST.attrs.get("mcpu", "generic"))
FAMILY = targets.target_isa_family(HOST)
# LLVM CPU names to stand in for "another CPU" (x86: both families, both vendors)
CPUS = ("haswell", "skylake", "znver2", "znver3", "alderlake", "skylake-avx512", "icelake-server", "znver4",
        "sapphirerapids")

LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
needs_family = pytest.mark.skipif(FAMILY == targets.GENERIC_FAMILY,
                                  reason=f"this CPU ({HOST_MCPU}) is of no ISA family: its records do not travel")


def _other_cpu(same_family: bool) -> str:
    for mcpu in CPUS:
        if mcpu != HOST_MCPU and (targets.isa_family(mcpu) == FAMILY) == same_family:
            return mcpu
    pytest.skip(f"no other CPU {'of' if same_family else 'outside'} family {FAMILY} among {CPUS}")


@pytest.fixture(scope="module")
def tuned_folder(tmp_path_factory) -> Path:
    """This CPU's folder with a real record of the tiny problem."""
    tmp = tmp_path_factory.mktemp("family")
    folder = tmp / "logs" / targets.target_folder_name(HOST)
    res = tune_problem(PROBLEM, HOST, folder, trials=8, work_root=tmp / "work", quiet=True)
    assert res.relative_error <= 1e-5
    return folder


def _as_cpu(folder: Path, root: Path, mcpu: str, old_meta: bool = False) -> Path:
    """A copy of `folder` as if tuned on CPU `mcpu` (folder name, meta.json and records' target)."""
    copy = root / f"cpu-{mcpu}"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["target"]["mcpu"] = mcpu
    meta["device_name"] = f"CPU {mcpu}"
    if old_meta:
        meta.pop("isa_family", None)  # written before families existed: read off mcpu
    else:
        meta["isa_family"] = targets.isa_family(mcpu)
    (copy / "meta.json").write_text(json.dumps(meta))
    records = copy / tuning_records.RECORD_FILE
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    for line in lines:
        line[1][2]["mcpu"] = mcpu
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return copy


def _compile():
    return tsc.compile(PROBLEM.sparse_kernel(), PROBLEM.input_shape, target="cpu")


def _check_result(op) -> None:
    kernel = PROBLEM.sparse_kernel()
    x = np.random.default_rng().standard_normal(PROBLEM.input_shape).astype(np.float32)
    assert rel_err(run_poisoned(op, x), reference_conv(x, kernel.to_dense())) <= 1e-5


def test_isa_families_of_known_cpus():
    if not str(targets.codegen.llvm_get_system_triple()).startswith("x86_64"):
        pytest.skip("x86 CPU names")
    assert targets.isa_family("znver4") == targets.isa_family("skylake-avx512") == "x86-avx512"
    assert targets.isa_family("znver3") == targets.isa_family("haswell") == "x86-avx2"
    assert targets.isa_family("sandybridge") == targets.isa_family("generic") == targets.GENERIC_FAMILY
    assert targets.isa_family("cortex-a72") == targets.GENERIC_FAMILY  # another architecture
    assert targets.cpu_vendor("znver4") == "amd" and targets.cpu_vendor("haswell") == "intel"
    # tune.py --mcpu: another model's target with this machine's cores
    assert targets.target_isa_family(targets.cpu_target("haswell")) == "x86-avx2"
    assert targets.cpu_target("haswell").attrs["num-cores"] == HOST.attrs["num-cores"]
    with pytest.raises(ValueError, match="does not know the CPU"):
        targets.cpu_target("not-a-cpu")


def test_the_row_sampled_reference_is_the_full_one_on_those_rows(rng):
    from tvm_sparseconv import reference, verification

    problem = Problem("strided", (2, 21, 9, 3), (3, 2, 3, 5), 0.5, strides=(2, 1), padding="SAME", dilations=(2, 1))
    wl = problem.workload()
    kernel = verification.random_kernel(wl, rng)
    assert kernel.ell_width == wl.ell_width and kernel.nnz > 0
    x = rng.standard_normal(wl.input_shape).astype(np.float32)
    rows = verification.checked_rows(wl.output_shape[1], rng, count=6)
    assert len(rows) == 6 and {0, 1, wl.output_shape[1] - 2, wl.output_shape[1] - 1} <= set(rows)
    full = reference_conv(x, kernel.to_dense(), strides=problem.strides, padding="SAME", dilations=problem.dilations)
    assert rel_err(reference.conv2d_f64(x, kernel.to_dense(), wl, rows=rows), full[:, rows]) <= 1e-12
    assert list(verification.checked_rows(4, rng)) == [0, 1, 2, 3]


@needs_family
def test_tuning_records_the_family(tuned_folder):
    assert tuning_records.read_meta(tuned_folder)["isa_family"] == FAMILY


@needs_family
def test_a_record_of_another_cpu_of_the_family_is_used_and_verified(tuned_folder, tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    other = _as_cpu(tuned_folder, root, _other_cpu(same_family=True), old_meta=True)
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tsc.UntunedWarning)
        warnings.simplefilter("error", tuning_records.TuningLogWarning)
        op = _compile()
    assert op.tuned
    assert op.schedule_source.endswith(f"@{other.name} (family {FAMILY}, verified here)"), op.schedule_source
    _check_result(op)
    # The check ran here, on this CPU's code, and its verdict sits beside the compiled module.
    verdict = module_cache.read_verdict(op._build.cache_path)
    assert verdict is not None and verdict["ok"] and verdict["relative_error"] <= 1e-5, verdict
    assert verdict["record"] == other.name and HOST_MCPU in verdict["target"]
    assert tuning_records.find_tuned_schedule(PROBLEM.workload(), HOST, other).travelled  # a folder given


@needs_family
def test_the_verdict_is_kept_and_a_failed_one_falls_back_to_the_template(tuned_folder, tmp_path, monkeypatch,
                                                                         cache_dir):
    root = tmp_path / "logs"
    _as_cpu(tuned_folder, root, _other_cpu(same_family=True))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    path = _compile()._build.cache_path
    verdict = module_cache.read_verdict(path)
    assert verdict["ok"]
    # A later process reads the verdict instead of checking again: one saying the record failed
    # here makes it fall back to the untuned template, with a warning saying why.
    module_cache.write_verdict(path, {**verdict, "ok": False, "relative_error": 0.5})
    build._VERDICTS.clear()  # as a new process
    with pytest.warns(tuning_records.TuningLogWarning, match="gives wrong results on this device"):
        with pytest.warns(tsc.UntunedWarning):
            op = _compile()
    assert not op.tuned and op.schedule_source.startswith("untuned:"), op.schedule_source
    _check_result(op)


@needs_family
def test_a_record_of_another_family_is_not_used(tuned_folder, tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    _as_cpu(tuned_folder, root, _other_cpu(same_family=False))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    with pytest.warns(tsc.UntunedWarning):
        op = _compile()
    assert not op.tuned, op.schedule_source
    assert list(module_cache.cache_dir().rglob("*" + module_cache.VERDICT_SUFFIX)) == []
    with pytest.warns(tuning_records.TuningLogWarning, match="its records are not used"):
        assert tuning_records.find_tuned_schedule(PROBLEM.workload(), HOST, next(root.iterdir())) is None


@needs_family
def test_this_cpus_own_record_comes_first(tuned_folder, tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    _as_cpu(tuned_folder, root, _other_cpu(same_family=True))
    shutil.copytree(tuned_folder, root / tuned_folder.name)
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    op = _compile()
    assert op.schedule_source.endswith(f"@{tuned_folder.name}"), op.schedule_source


def _committed_family_entries():
    """(folder, problem, workload json) of every committed record of this CPU's family (own included)."""
    out = []
    for folder in sorted(p for p in LOGS.iterdir() if p.is_dir()) if LOGS.is_dir() else []:
        meta = tuning_records.read_meta(folder) or {}
        if FAMILY != targets.GENERIC_FAMILY and tuning_records.meta_family(meta) == FAMILY:
            out += [(folder.name, e["problem"], e["workload"]) for e in meta["entries"]]
    return out


FAMILY_ENTRIES = _committed_family_entries()


@pytest.mark.parametrize("folder,problem,workload", FAMILY_ENTRIES, ids=[f"{f}/{p}" for f, p, _ in FAMILY_ENTRIES])
def test_committed_records_of_this_family_compute_correctly_here(folder, problem, workload):
    """What `compile()` does with another CPU's record on first use, for every committed one."""
    wl = ConvWorkload.from_json(workload)
    tuned = tuning_records.find_tuned_schedule(wl, HOST, LOGS / folder)
    assert tuned is not None and tuned.tuned_workload == wl, f"{folder}/{problem} does not replay"
    assert tuned.travelled == (folder != targets.target_folder_name(HOST))
    function = compile_tir(tuned.schedule.mod, HOST).mod[build.FUNC_NAME]
    assert verification.check_function(function, wl, tvm.cpu()) <= verification.TOLERANCE


@needs_family
def test_family_folders_same_vendor_first_then_by_name(tuned_folder, tmp_path):
    root = tmp_path / "logs"
    same = [m for m in CPUS if m != HOST_MCPU and targets.isa_family(m) == FAMILY]
    for mcpu in same + [_other_cpu(same_family=False)]:
        _as_cpu(tuned_folder, root, mcpu)
    vendor = targets.cpu_vendor(HOST_MCPU)
    want = sorted(f"cpu-{m}" for m in same if targets.cpu_vendor(m) == vendor)
    want += sorted(f"cpu-{m}" for m in same if targets.cpu_vendor(m) != vendor)
    assert [folder.name for folder, _ in tuning_records.family_folders(HOST, root)] == want


# --- the tile records of generated algorithms (cpu-register-reuse) travel the same way -------------

def _tile_record_folder(root: Path, mcpu: str, tile: str = "l8b1") -> Path:
    """A folder of CPU `mcpu` holding only a cpu-register-reuse tile record of PROBLEM's shape, with
    the meta.json its --record run writes (`tuning_records.ensure_meta`)."""
    from tvm_sparseconv import algorithms, tile_records

    kernel = PROBLEM.sparse_kernel()
    wl = algorithms.workload_for(kernel, PROBLEM.workload(kernel), "cpu-register-reuse")
    folder = root / f"cpu-{mcpu}"
    tuning_records.ensure_meta(folder, targets.cpu_target(mcpu), f"CPU {mcpu}")
    tile_records.write(tile_records.path_for(folder, "cpu-register-reuse"), "cpu-register-reuse", f"CPU {mcpu}", "test",
                       [{"layer": PROBLEM.name, "shape": tile_records.shape_key(wl), "tile": tile, "seconds": 1e-6,
                         "nonzeros": kernel.nnz}])
    return folder


@needs_family
def test_a_tile_record_of_another_cpu_of_the_family_is_used_and_verified(tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    other = _tile_record_folder(root, _other_cpu(same_family=True))
    assert tuning_records.read_meta(other)["isa_family"] == FAMILY and tuning_records.family_folders(HOST, root)
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    op = _compile()
    assert op.algorithm == "cpu-register-reuse", op.schedule_source
    assert op.schedule_source == f"tuned:cpu-register-reuse l8b1@{other.name} (family {FAMILY}, verified here)"
    _check_result(op)
    verdict = module_cache.read_verdict(op._build.cache_path)
    assert verdict is not None and verdict["ok"] and verdict["relative_error"] <= 1e-5, verdict
    assert verdict["record"] == other.name and verdict["family"] == FAMILY


@needs_family
def test_a_tile_record_of_another_family_is_not_used(tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "logs"
    _tile_record_folder(root, _other_cpu(same_family=False))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    with pytest.warns(tsc.UntunedWarning):
        op = _compile()
    assert op.algorithm != "cpu-register-reuse", op.schedule_source


@needs_family
def test_a_travelled_tile_record_is_not_weighed_against_this_cpus_own_records(tuned_folder, tmp_path, monkeypatch,
                                                                             cache_dir):
    """Times measured on two machines are not compared: this CPU's own scheduled record wins."""
    root = tmp_path / "logs"
    shutil.copytree(tuned_folder, root / tuned_folder.name)
    _tile_record_folder(root, _other_cpu(same_family=True))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    op = _compile()
    assert op.schedule_source.endswith(f"@{tuned_folder.name}") and op.algorithm != "cpu-register-reuse"


@needs_family
def test_a_tile_search_also_times_the_familys_record_tile_and_records_the_faster(tmp_path, monkeypatch, cache_dir):
    """An own tile record outranks the family's in compile() (a GPU's is weighed 1.5x slower, a
    CPU's not at all), so a search of other tiles (`--tiles`) also builds, checks and times the
    family's record tile here, and records whichever ran faster."""
    from tvm_sparseconv import tile_records, tile_tuning

    root = tmp_path / "logs"
    other = _tile_record_folder(root, _other_cpu(same_family=True), tile="l8b4h")
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    own = root / targets.target_folder_name(HOST)
    res = tile_tuning.search(PROBLEM, "cpu-register-reuse", HOST, own, tiles=["l8b1"], repeats=5)
    assert res.family_tiles == {"l8b4h": other.name} and res.as_dict()["family_tiles"] == res.family_tiles
    assert set(res.tiles) == {"l8b1", "l8b4h"}, res.tiles
    for tile in res.tiles.values():
        assert tile["relative_error"] <= 1e-5 and tile["seconds"] > 0, tile
    best = min(res.tiles, key=lambda t: res.tiles[t]["seconds"])
    assert res.best == best
    if res.recorded:  # also faster than the layer's scheduled choice in this run
        assert res.recorded == best
        kernel = PROBLEM.sparse_kernel()
        op = _compile()
        assert tile_records.find(own, "cpu-register-reuse", op.workload, kernel.nnz)["tile"] == best
        assert op.schedule_source == f"tuned:cpu-register-reuse {best}@{own.name}"
        _check_result(op)
    else:
        assert "slower than" in res.why_not, res.why_not


@needs_family
def test_a_tuning_times_the_familys_record_beside_its_search_and_keeps_the_faster(tmp_path, monkeypatch, cache_dir):
    """Once written, an own GPU record displaces the architecture's (weighed 1.5x slower) even where
    that one runs faster here (H100 conv5 3x3 b1, stop 56): so a tuning times each family folder's
    record of the layer beside its search's best (`family_records`) and keeps the faster, as this
    device's record with its time here. The other CPU's record here is an untuned template, the
    "search's best" the unscheduled loop nest (one thread, no vectors), so the record wins; compile()
    then replays it from this CPU's own folder."""
    from tvm_sparseconv import reference
    from tvm_sparseconv.tuning import (LocalSite, _keep_record, _search_or_untuned, family_records, problem_arguments,
                                       tuned_rules, untuned_schedules)
    import tvm.s_tir.meta_schedule as ms

    problem = Problem("family_wins", (1, 32, 32, 32), (3, 3, 32, 32), 0.3)
    wl, dense_w, arrays = problem_arguments(problem)
    mod = tuning_records.workload_module(wl)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])

    def record_of(trace):
        return ms.database.TuningRecord(trace, ms.database.MemoryDatabase().commit_workload(mod), [1e-4], HOST, args)

    variant, template = untuned_schedules(tuned_rules(HOST), mod, HOST)[0]
    src = tmp_path / "src" / targets.target_folder_name(HOST)
    assert _keep_record(src, record_of(template.trace), mod, wl, problem, HOST, 1e-4, 0.0, "") == ""
    root = tmp_path / "logs"
    other = _as_cpu(src, root, _other_cpu(same_family=True))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    own = root / targets.target_folder_name(HOST)
    others = family_records(wl, HOST, own)
    assert [label for label, _ in others] == [f"{other.name}'s record ({variant.name})"]

    site = LocalSite(targets.device_for(HOST))
    record, err, source, _, timed = _search_or_untuned(
        record_of(tvm.s_tir.Schedule(mod).trace), 0.0, site.load(compile_tir(mod, HOST)), mod, wl,
        reference.conv2d_f64(arrays[0], dense_w, wl), arrays, HOST, site, [], None, others)
    assert source == others[0][0] and set(timed) == {"search", source} and timed[source] < timed["search"], timed
    assert err <= 1e-5 and float(record.run_secs[0]) * 1e6 == pytest.approx(timed[source], abs=0.01)

    assert _keep_record(own, record, mod, wl, problem, HOST, float(record.run_secs[0]), err, "") == ""
    assert tuning_records.read_meta(own)["entries"][0]["rule"] == variant.name
    kernel = problem.sparse_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tsc.UntunedWarning)
        op = tsc.compile(kernel, problem.input_shape, target="cpu")
    assert op.schedule_source == f"tuned:{variant.name}@{own.name}", op.schedule_source
    x = np.random.default_rng().standard_normal(problem.input_shape).astype(np.float32)
    assert rel_err(run_poisoned(op, x), reference_conv(x, kernel.to_dense())) <= 1e-5
