"""Committed tuning logs and the tuning pipeline, checked on a machine without a GPU.

- Every committed CUDA record replays onto its workload and its generated CUDA code compiles with
  nvcc for the record's architecture (TVM generates CUDA source without a GPU).
- Random draws from each CUDA design space pass MetaSchedule's postprocessors or are rejected by
  them, never by a crash (a broken trace would waste every tuning trial), and every register
  accumulator they write back was zeroed (a thread with a strided set of pixels races its neighbours).
- A real (tiny) MetaSchedule tuning run for this CPU writes a record that `compile()` then uses.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, targets, tuning_records
from tvm_sparseconv.tir_build import compile_tir
from tvm_sparseconv.tuning import design_space, enough_trials, problem_arguments, tune_problem
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import HEADLINE, NETWORKS, RESNET50, TINY

from conftest import run_poisoned, reference_conv, rel_err

LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"


def _cuda_entries_with_rule():
    """(folder, problem, workload, arch, rule) of every committed CUDA record."""
    out = []
    for folder in sorted(p for p in LOGS.iterdir() if p.is_dir()) if LOGS.is_dir() else []:
        meta = tuning_records.read_meta(folder) or {}
        if meta.get("target", {}).get("kind") == "cuda":
            out += [(folder.name, e["problem"], e["workload"], meta["target"]["arch"], e.get("rule", "?"))
                    for e in meta["entries"]]
    return out


def _cuda_entries():
    return [e[:4] for e in _cuda_entries_with_rule()]


CUDA_ENTRIES = _cuda_entries()


def test_committed_logs_exist_and_are_for_this_tvm():
    assert CUDA_ENTRIES, f"no committed CUDA tuning records under {LOGS}"
    for folder in {f for f, *_ in CUDA_ENTRIES}:
        meta = tuning_records.read_meta(LOGS / folder)
        assert meta["tvm_version"] == tvm.__version__, f"{folder} was tuned with TVM {meta['tvm_version']}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("folder,problem,workload,arch", CUDA_ENTRIES, ids=[f"{f}/{p}" for f, p, *_ in CUDA_ENTRIES])
def test_committed_cuda_record_applies_and_compiles_with_nvcc(folder, problem, workload, arch, tmp_path):
    from tvm.support import nvcc

    wl = ConvWorkload.from_json(workload)
    target = targets.cuda_target_for_arch(arch)
    tuned = tuning_records.find_tuned_schedule(wl, target, LOGS / folder)
    assert tuned is not None, f"{folder}/{problem}: record does not apply to its workload"
    assert tuned.tuned_workload == wl
    lib = compile_tir(tuned.schedule.mod, target)
    src = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
    assert "__global__" in src
    with target:
        cubin = nvcc.compile_cuda(src, target_format="cubin", arch=arch, compiler="nvcc")
    assert len(cubin) > 0


def test_records_are_never_applied_to_another_gpu_or_tvm_version(tmp_path):
    folder, problem, workload, arch = CUDA_ENTRIES[0]
    wl = ConvWorkload.from_json(workload)
    other_arch = targets.cuda_target_for_arch("sm_80" if arch != "sm_80" else "sm_90")
    with pytest.warns(tuning_records.TuningLogWarning, match="its records are not used"):
        assert tuning_records.find_tuned_schedule(wl, other_arch, LOGS / folder) is None
    copy = tmp_path / folder
    shutil.copytree(LOGS / folder, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["tvm_version"] = "0.0.1"
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(tuning_records.TuningLogWarning, match="tuned with TVM 0.0.1"):
        assert tuning_records.find_tuned_schedule(wl, targets.cuda_target_for_arch(arch), copy) is None


@pytest.mark.parametrize("folder", sorted(p.name for p in LOGS.iterdir() if p.is_dir()) if LOGS.is_dir() else [])
def test_committed_logs_read_cleanly(folder):
    """Every line of every committed database parses, and every record is for its folder's target."""
    path = LOGS / folder
    scan = tuning_records.scan_database(path)
    assert scan.problems == [] and scan.normalised == set()
    meta = tuning_records.read_meta(path)
    assert len(scan.records) == len(meta["entries"]) and len(scan.workloads) == len(meta["entries"])
    for rec in scan.records:
        assert tuning_records._record_target_mismatch(rec.target, meta["target"]) is None
    assert tuning_records.repair_folder(path) == []  # nothing to repair: the files are untouched


@pytest.mark.parametrize("folder", sorted({e[0] for e in CUDA_ENTRIES}))
def test_each_committed_cuda_workload_line_is_one_meta_entrys(folder):
    """A GPU folder's workload lines and its meta entries match one to one (structurally), in
    whatever order: the database keeps its lines in the order they were tuned, the meta its
    entries by problem, so dropping a stale record by its entry's position instead drops another
    layer's (stop 52 did, and the record-replay test caught it)."""
    path = LOGS / folder
    entries = tuning_records.read_meta(path)["entries"]
    modules = [tuning_records.workload_module(ConvWorkload.from_json(e["workload"])) for e in entries]
    lines = [w.parsed.mod for w in tuning_records.scan_database(path).workloads]
    named = [[i for i, m in enumerate(modules) if tvm_ffi.structural_equal(m, line)] for line in lines]
    assert [j for j, hits in enumerate(named) if len(hits) != 1] == []
    assert sorted(hits[0] for hits in named) == list(range(len(entries)))


# a strided 1x1 (nhwc-direct stages its strided view)
_PROJECTION_B32 = next(p for p in NETWORKS["resnet50_network_s90_b32"] if "proj_s2" in p.name)


@pytest.mark.parametrize("algorithm", [a.name for a in algorithms.ALGORITHMS.values()
                                       if not a.generated and a.applies(None, "cuda")])
@pytest.mark.parametrize("problem", [HEADLINE, TINY[1], RESNET50["resnet50_3x3_b1"][-1],
                                     RESNET50["resnet50_1x1_b32"][-2], RESNET50["resnet50_1x1_b1"][-3],
                                     _PROJECTION_B32],
                         ids=lambda p: p.name)
def test_cuda_design_spaces_sample_cleanly(problem, algorithm):
    target = targets.cuda_target_for_arch("sm_90")
    wl = problem.workload(algorithm=algorithm)
    if not algorithms.by_name(algorithm).applies(wl, "cuda"):
        pytest.skip(f"{algorithm} does not compute {problem.name}")
    mod = tuning_records.workload_module(wl)
    space = design_space(target, algorithm=algorithm)
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=space, task_name="main", num_threads=1)
    postprocs = ctx.space_generator.postprocs
    built = 0
    for seed in range(1, 9):
        for design in ctx.generate_design_space():
            sch = tvm.s_tir.Schedule(mod, seed=seed)
            tvm.s_tir.Trace(design.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if all(p.apply(sch) for p in postprocs):
                lib = compile_tir(sch.mod, target)
                _assert_accumulators_initialised(lib, sch.trace)
                sch.trace.as_json()  # what a tuning record stores (a product of sampled factors would not serialise)
                built += 1
    assert built > 0, "every sampled candidate was rejected"


def _assert_accumulators_initialised(lib, trace):
    """Every register accumulator a thread writes back was zeroed first. A thread whose pixels are
    a strided set gets its bounding box as accumulators, and stores the unused ones (garbage) over
    its neighbours' outputs: a race that a correctness check on the GPU passes now and then."""
    src = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
    size = re.search(r"float conv_local_ptr\[(\d+)\]", src)
    if size is None:
        return
    zeroed = set(re.findall(r"conv_local_ptr\[(\d+)\] = 0x0p\+0f", src))
    loops = re.search(r"conv_local_ptr\[[^\]]*[a-z_][^\]]*\] = 0x0p\+0f", src)  # zeroed in a loop
    assert loops or len(zeroed) == int(size.group(1)), (
        f"{len(zeroed)} of {size.group(1)} accumulators zeroed; decisions {list(trace.decisions.values())}")


def test_cpu_design_space_draws_match_reference():
    """Random draws from the CPU design space (what tuning measures) all compute the right result:
    tuning checks only its best few, so no corner of the space may be wrong."""
    target = targets.host_cpu_target()
    rng = np.random.default_rng()
    for problem in TINY:
        wl, w, arrays = problem_arguments(problem, seed=int(rng.integers(1 << 30)))
        mod = tuning_records.workload_module(wl)
        ctx = ms.TuneContext(mod=mod, target=target, space_generator=design_space(target), task_name="main",
                             num_threads=1)
        ref = reference_conv(arrays[0], w, wl.strides, problem.padding, wl.dilations)
        ran = 0
        for design in ctx.generate_design_space():
            for seed in rng.integers(1, 1 << 30, size=3):
                sch = tvm.s_tir.Schedule(mod, seed=int(seed))
                tvm.s_tir.Trace(design.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
                sch.enter_postproc()
                if not all(p.apply(sch) for p in ctx.space_generator.postprocs):
                    continue
                f = compile_tir(sch.mod, target)[algorithms.FUNC_NAME]
                out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
                f(*[tvm.runtime.tensor(a) for a in arrays], out)
                err = rel_err(out.numpy(), ref)
                assert err <= 1e-5, f"{problem.name}: error {err:.2e}, decisions {list(sch.trace.decisions.values())}"
                ran += 1
        assert ran > 0, f"{problem.name}: every draw was rejected"


def test_a_round_short_by_at_most_an_eighth_ends_the_workload():
    assert enough_trials(64, 64) == 56  # 56..63 measured after a round: no new round for the rest
    assert enough_trials(256, 64) == 248 and enough_trials(16, 16) == 14 and enough_trials(4, 4) == 4


def test_a_forced_re_tune_weighs_the_folder_record_timed_in_this_run_not_its_stored_time(tmp_path):
    """The folder's record is re-timed beside the new one, in turns: a stored time from another run
    (here an impossible 0.001 us) neither keeps it nor replaces it."""
    target = targets.host_cpu_target()
    folder = tmp_path / "logs" / targets.target_folder_name(target)
    tune_problem(TINY[0], target, folder, trials=8, work_root=tmp_path / "work", quiet=True)
    meta = json.loads((folder / "meta.json").read_text())
    for entry in meta["entries"]:
        entry["run_us"] = 1e-3
    (folder / "meta.json").write_text(json.dumps(meta))
    res = tune_problem(TINY[0], target, folder, trials=8, work_root=tmp_path / "work2", quiet=True)
    assert res.not_kept == "" or "timed in turns" in res.not_kept, res.not_kept
    entries = json.loads((folder / "meta.json").read_text())["entries"]
    assert len(entries) == 1 and (entries[0]["run_us"] == 1e-3) == (res.not_kept != "")


def test_tuning_a_tiny_workload_on_this_cpu_writes_a_record_compile_uses(tmp_path, monkeypatch):
    target = targets.host_cpu_target()
    root = tmp_path / "logs"
    folder = root / targets.target_folder_name(target)
    measured = []
    res = tune_problem(TINY[0], target, folder, trials=8, work_root=tmp_path / "work",
                       on_batch=lambda n, best: measured.append(n))
    assert res.relative_error <= 1e-5 and res.best_seconds > 0
    assert enough_trials(8, 8) <= sum(measured) == res.measured <= 8, measured
    assert (folder / "database_tuning_record.json").stat().st_size > 0

    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    kernel = TINY[0].sparse_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tsc.UntunedWarning)  # must find the record: no warning
        op = tsc.compile(kernel, TINY[0].input_shape, target="cpu")
    assert op.tuned, op.schedule_source
    x = np.random.default_rng().standard_normal(TINY[0].input_shape).astype(np.float32)
    assert rel_err(run_poisoned(op, x), reference_conv(x, kernel.to_dense())) <= 1e-5

    # The same layer with a bias and an activation (as Keras layers have) replays that record, the
    # epilogue inlined after it, and computes act(conv + bias).
    bias = np.random.default_rng().standard_normal(kernel.shape[3]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tsc.UntunedWarning)
        op = tsc.compile(kernel, TINY[0].input_shape, target="cpu", bias=bias, activation="relu6")
    assert op.tuned, op.schedule_source
    ref = reference_conv(x, kernel.to_dense(), bias=bias, activation="relu6")
    assert rel_err(run_poisoned(op, x), ref) <= 1e-5


@pytest.mark.parametrize("pooled", [False, True], ids=["built-here", "built-on-the-pool"])
def test_tuning_keeps_an_untuned_template_that_runs_faster_than_the_searchs_best(tmp_path, monkeypatch, pooled):
    """The rules' untuned templates are timed beside the search's best: here that "best" is the
    unscheduled loop nest (one thread, no vectors), so a template wins; it is kept as a record that
    compile() replays to a correct kernel. The templates build here one after another, or all at
    once on the tuning's builder pool (its exported libraries loaded back)."""
    from tvm_sparseconv import reference
    from tvm_sparseconv.tuning import LocalSite, _keep_record, _search_or_untuned, tuned_rules
    from tvm_sparseconv.tuning_builder import pooled_builder
    from tvm_sparseconv.workloads import Problem

    problem = Problem("untuned_wins", (1, 32, 32, 32), (3, 3, 32, 32), 0.3)
    target = targets.host_cpu_target()
    wl, dense_w, arrays = problem_arguments(problem)
    mod = tuning_records.workload_module(wl)
    db = ms.database.MemoryDatabase()
    naive = ms.database.TuningRecord(tvm.s_tir.Schedule(mod).trace, db.commit_workload(mod), [1.0], target,
                                     ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
    site = LocalSite(targets.device_for(target))
    naive_lib = site.load(compile_tir(mod, target))
    record, err, source, _, timed = _search_or_untuned(naive, 0.0, naive_lib, mod, wl,
                                                       reference.conv2d_f64(arrays[0], dense_w, wl), arrays, target,
                                                       site, tuned_rules(target), pooled_builder(2) if pooled else None)
    assert source != "search" and source.endswith("untuned"), source
    # every candidate's time is reported, the kept one the fastest of them
    assert "search" in timed and source in timed and timed[source] == min(timed.values()), timed
    assert err <= 1e-5 and 0 < float(record.run_secs[0]) < 1.0
    # the record stores the time measured here, beside the others, not the search runner's
    assert float(record.run_secs[0]) * 1e6 == pytest.approx(timed[source], abs=0.01)

    folder = tmp_path / "logs" / targets.target_folder_name(target)
    assert _keep_record(folder, record, mod, wl, problem, target, float(record.run_secs[0]), err, "") == ""
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(tmp_path / "logs"))
    kernel = problem.sparse_kernel()
    op = tsc.compile(kernel, problem.input_shape, target="cpu")
    assert op.tuned, op.schedule_source
    x = np.random.default_rng().standard_normal(problem.input_shape).astype(np.float32)
    assert rel_err(run_poisoned(op, x), reference_conv(x, kernel.to_dense())) <= 1e-5


def test_a_retune_replaces_the_record_only_when_faster(tmp_path):
    """`tune.py --force` with a new rule: one record per workload stays, the faster one."""
    from tvm_sparseconv.tuning import _keep_record

    src = LOGS / "cpu-znver3"
    folder = tmp_path / "cpu-znver3"
    shutil.copytree(src, folder)
    meta = tuning_records.read_meta(folder)
    entry = next(e for e in meta["entries"] if e["problem"] == HEADLINE.name)
    wl = tuning_records.entry_workload(entry)
    mod = tuning_records.workload_module(wl)
    scan = tuning_records.scan_database(folder)
    index = next(i for i, w in enumerate(scan.workloads) if tvm_ffi.structural_equal(w.parsed.mod, mod))
    record = next(r.parsed for r in scan.records if r.workload_index == index)
    target = targets.cpu_target(mcpu=meta["target"]["mcpu"])
    n_records = len(tuning_records.scan_database(folder).records)

    slower = entry["run_us"] * 2e-6
    why = _keep_record(folder, record, mod, wl, HEADLINE, target, slower, 1e-7, "")
    assert "faster" in why
    assert len(tuning_records.scan_database(folder).records) == n_records
    assert tuning_records.read_meta(folder) == meta  # untouched

    faster = entry["run_us"] * 0.5e-6
    assert _keep_record(folder, record, mod, wl, HEADLINE, target, faster, 1e-7, "") == ""
    scan = tuning_records.scan_database(folder)
    assert len(scan.records) == n_records  # the old record of the workload went
    new_entry = next(e for e in tuning_records.read_meta(folder)["entries"] if e["problem"] == HEADLINE.name)
    assert new_entry["run_us"] == pytest.approx(faster * 1e6)


def test_records_serve_other_epilogues_but_never_a_layer_without_one():
    base = TINY[0].workload()
    width = lambda w, n: replace(w, ell_width=n)  # noqa: E731
    plain, biased = width(base, 8), width(replace(base, has_bias=True), 8)
    relu, biased_relu = width(replace(base, activation="relu"), 8), replace(biased, activation="relu")
    wider_plain = width(base, 12)
    entries = [({"n": i}, w) for i, w in enumerate([wider_plain, biased, plain])]
    pick = lambda wl, es=entries: tuning_records._pick_entry(es, wl)[1]  # noqa: E731
    assert pick(plain) == plain and pick(biased) == biased  # their own epilogue first
    assert pick(biased_relu) == biased  # another epilogue: its trace inlines the block both have
    assert pick(relu, entries[:1] + entries[2:]) == plain  # none: inlined after the replay
    assert tuning_records._pick_entry(entries[1:2], plain) is None  # its trace would look for one


def test_a_record_of_a_narrower_layer_counts_at_this_layers_width_and_a_retune_times_it():
    """The H100's union record of conv2 3x3 b1 pruned in blocks of 8 channels (its chunks 40 taps
    wide, 7.0 us) is the nearest-width record of the elementwise layer too, whose chunks are ~4x
    wider: taken at 7.0 us it was chosen there over register-reuse (7.3) and ran in 14.2 (stop 57).
    Its time now counts scaled up to the layer's width, never down, and a re-tune of the layer
    times it beside the search (`other_width_records`)."""
    from tvm_sparseconv import build
    from tvm_sparseconv.tuning import other_width_records
    from tvm_sparseconv.workloads import workload_set

    target, folder = targets.cuda_target_for_arch("sm_90"), LOGS / "nvidia-h100"
    elementwise, blocks = (next(p for p in workload_set(s) if p.name.startswith("resnet50_conv2_3x3_b1"))
                           for s in ("resnet50_network_s90_b1", "resnet50_network_s90_b1_g8"))
    layers = {}
    for p in (elementwise, blocks):
        k = p.for_target("cuda").sparse_kernel()
        layers[p.name] = (k, p.workload(k), algorithms.workload_for(k, p.workload(k), "union-tf32"))
    _, _, wide = layers[elementwise.name]
    _, _, narrow = layers[blocks.name]
    assert narrow.ell_width * 3 < wide.ell_width
    own = tuning_records.find_tuned_schedule(narrow, target, folder)
    assert own.tuned_workload.ell_width == narrow.ell_width and own.estimated_us == own.run_us
    borrowed = tuning_records.find_tuned_schedule(wide, target, folder)
    assert borrowed.tuned_workload == own.tuned_workload
    assert borrowed.estimated_us == pytest.approx(own.run_us * wide.ell_width / narrow.ell_width)
    k, wl, _ = layers[elementwise.name]
    found = build._tuned_records(algorithms.workloads_for(k, wl, "cuda", precision="tf32"), target, folder)
    assert min(found, key=lambda f: f[:2])[2].algorithm != "union-tf32", found
    (label, schedule), = other_width_records(wide, target, folder)
    assert f"record of width {narrow.ell_width} (cuda-union-tf32)" in label and schedule is not None
    assert other_width_records(narrow, target, folder) == []  # its own: timed as the folder's record


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("rule", sorted({e[-1] for e in _cuda_entries_with_rule()}))
def test_a_cuda_record_serves_its_layer_with_bias_and_relu(rule):
    """One committed record per CUDA rule replays onto its layer with a bias and ReLU (the epilogue
    inlined after the replay) and the result still compiles with nvcc; the GPU tests run such layers."""
    from tvm.support import nvcc

    folder, problem, workload, arch, _ = next(e for e in _cuda_entries_with_rule() if e[-1] == rule)
    wl = replace(ConvWorkload.from_json(workload), has_bias=True, activation="relu")
    target = targets.cuda_target_for_arch(arch)
    tuned = tuning_records.find_tuned_schedule(wl, target, LOGS / folder)
    assert tuned is not None, f"{folder}/{problem}: its record does not serve the layer with an epilogue"
    lib = compile_tir(tuned.schedule.mod, target)
    src = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
    assert "bias" in src and "max(" in src, "the epilogue is not in the kernel"
    with target:
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch=arch, compiler="nvcc")) > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_a_union_tf32_record_serves_its_layer_with_bias_and_relu(tmp_path):
    """union-tf32's compute always ends in its NHWC epilogue, which its rule inlines: a record tuned
    without bias (written as tuning writes one, from a sampled draw) still serves the layer with a
    bias and ReLU (the replay must not look for the block a second time), and compiles with nvcc."""
    from types import SimpleNamespace

    from tvm.s_tir import meta_schedule as ms
    from tvm.support import nvcc

    from tvm_sparseconv import tuning

    problem = RESNET50["resnet50_1x1_b32"][-2]
    wl = problem.workload(algorithm="union-tf32")
    target = targets.cuda_target_for_arch("sm_90")
    mod = tuning_records.workload_module(wl)
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=design_space(target, algorithm="union-tf32"),
                         task_name="main", num_threads=1)
    design = ctx.generate_design_space()[0]
    record = SimpleNamespace(trace=design.trace, run_secs=[tvm.runtime.convert(50e-6)], args_info=None)
    assert tuning._write_record(tmp_path, record, mod, wl, problem, target, 50e-6, 3e-4, "test GPU") == ""
    biased = replace(wl, has_bias=True, activation="relu")
    tuned = tuning_records.find_tuned_schedule(biased, target, tmp_path)
    assert tuned is not None and tuned.tuned_workload == wl, "the record does not serve the biased layer"
    src = next(m for m in compile_tir(tuned.schedule.mod, target).mod.imports if m.kind == "cuda").inspect_source()
    assert "bias" in src and "max(" in src and "mma.sync" in src
    with target:
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")) > 0


def test_cpu_records_of_the_old_relayout_replay_with_the_blocked_one_and_compute_correctly():
    """A committed znver3 record (tuned when the relayout ran in chunks of 1024) replays its
    convolution as recorded and the relayout in 16 x 16 blocks (`schedules/cpu.py`); float64 agrees."""
    from tvm_sparseconv import reference
    from tvm_sparseconv.schedules.cpu import RELAYOUT_BLOCK, without_old_relayout

    from tvm_sparseconv.workloads import workload_set

    target = targets.cpu_target("znver3")
    problem = workload_set("resnet50_conv4_1x1_reduce_b1")[0].for_target("llvm")
    kernel = problem.sparse_kernel()
    wl = problem.workload(kernel)
    tuned = tuning_records.find_tuned_schedule(wl, target, tuning_records.logs_root() / "cpu-znver3")
    assert tuned is not None
    sch = tuned.schedule
    assert without_old_relayout(sch.trace) is None, "the replayed trace carries the new relayout"
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("x_gather"))]
    assert [int(loop.extent) for loop in loops[1:]] == [RELAYOUT_BLOCK, RELAYOUT_BLOCK]
    assert str(loops[0].kind) == "1"  # parallel
    host = targets.host_cpu_target()
    lib = compile_tir(sch.mod, host)
    x = np.random.default_rng(3).standard_normal(wl.input_shape).astype(np.float32)
    args = [tvm.runtime.tensor(a) for a in [x, *algorithms.pack_weights(wl, kernel)]]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    lib[algorithms.FUNC_NAME](*args, out)
    assert reference.relative_error(out.numpy(), reference.conv2d_f64(x, kernel.to_dense(), wl)) <= 1e-5


def test_tune_py_drop_removes_one_layers_record_and_keeps_the_others_replaying(tmp_path):
    """`tune.py --drop` (a record that made a layer slower, stop 56): the layer's MetaSchedule
    record, workload line and meta entry go; every other record keeps replaying its own schedule,
    renumbered past the removed line (the database is in tuning order, the meta by problem: stop 52
    dropped another layer's record by position). A generated algorithm's tile record goes too."""
    from conftest import load_script

    tune = load_script("scripts/tune.py")
    copy = tmp_path / "nvidia-h100"
    shutil.copytree(LOGS / "nvidia-h100", copy)
    meta = tuning_records.read_meta(copy)
    target = targets.cuda_target_for_arch("sm_90")
    gone = next(e for e in meta["entries"] if e["problem"] == "resnet50_conv5_3x3_s2_b1" and "ell" in e["rule"])
    wl = ConvWorkload.from_json(gone["workload"])
    lines = [w.parsed.mod for w in tuning_records.scan_database(copy).workloads]
    at = next(i for i, m in enumerate(lines) if tvm_ffi.structural_equal(m, tuning_records.workload_module(wl)))
    # entries whose lines come after the dropped one (renumbered) and one before, with their traces
    after = [e for e in meta["entries"] if any(tvm_ffi.structural_equal(m, tuning_records.workload_module(
        ConvWorkload.from_json(e["workload"]))) for m in lines[at + 1:])][:3]
    before = [e for e in meta["entries"] if tvm_ffi.structural_equal(lines[0], tuning_records.workload_module(
        ConvWorkload.from_json(e["workload"])))]
    kept = after + before
    assert len(after) == 3 and len(before) == 1

    def trace(e, folder):
        return str(tuning_records.find_tuned_schedule(ConvWorkload.from_json(e["workload"]), target, folder).schedule.trace)

    traces = [trace(e, copy) for e in kept]
    assert tune.main(["--drop", "--out", str(copy), "--workloads", "resnet50_conv5_3x3_s2_b1",
                      "--algorithm", "ell-gather"]) == 0
    scan = tuning_records.scan_database(copy)
    new_meta = tuning_records.read_meta(copy)
    assert len(scan.records) == len(scan.workloads) == len(new_meta["entries"]) == len(meta["entries"]) - 1
    assert gone not in new_meta["entries"] and tuning_records.repair_folder(copy) == []
    assert tuning_records.find_tuned_schedule(wl, target, copy) is None or \
        tuning_records.find_tuned_schedule(wl, target, copy).tuned_workload != wl  # (a nearest width may fill in)
    assert [trace(e, copy) for e in kept] == traces
    # the layer's union record stays; dropping again finds nothing
    assert any(e["problem"] == "resnet50_conv5_3x3_s2_b1" for e in new_meta["entries"])
    assert tune.main(["--drop", "--out", str(copy), "--workloads", "resnet50_conv5_3x3_s2_b1",
                      "--algorithm", "ell-gather"]) == 0
    assert len(tuning_records.read_meta(copy)["entries"]) == len(new_meta["entries"])

    from tvm_sparseconv import tile_records
    before_tiles = tile_records.read(tile_records.path_for(copy, "csr-split-k"), "csr-split-k")
    assert tune.main(["--drop", "--out", str(copy), "--workloads", "resnet50_conv5_1x1_reduce_b1",
                      "--algorithm", "csr-split-k"]) == 0
    after_tiles = tile_records.read(tile_records.path_for(copy, "csr-split-k"), "csr-split-k")
    assert [r["layer"] for r in before_tiles if r not in after_tiles] == ["resnet50_conv5_1x1_reduce_b1"]
    assert len(after_tiles) == len(before_tiles) - 1
