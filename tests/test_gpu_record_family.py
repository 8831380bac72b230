"""Tuning records that travel between GPUs of one CUDA architecture (issue 12: the H100 has no
register-reuse records; the H200's serve it).

What runs here without a GPU: which folders a GPU of an architecture searches, and how a record of
another GPU of the architecture is weighed against this GPU's own (its time taken
`targets.GPU_FAMILY_TIME_FACTOR` slower). The committed H100 and H200 folders are used as they are;
"this GPU" is named by patching `target_folder_name` (which otherwise asks the GPU for its name).
That such a record compiles, is checked against float64 on first use and computes correctly runs
on the GPU: `tests/test_gpu.py::test_a_record_of_another_gpu_of_the_architecture_is_used_and_verified`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tvm_sparseconv import algorithms, build, targets, tile_records, tuning_records
from tvm_sparseconv.workloads import workload_set

LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
SM90 = targets.cuda_target_for_arch("sm_90")


def test_a_gpus_family_is_its_cuda_architecture():
    assert targets.cuda_family("sm_90") == targets.cuda_family("sm_90a") == "cuda-sm_90"
    assert targets.target_isa_family(SM90) == "cuda-sm_90"
    assert targets.target_isa_family(targets.cuda_target_for_arch("sm_80")) == "cuda-sm_80"
    for gpu in ("nvidia-h100", "nvidia-h200"):
        assert tuning_records.meta_family(tuning_records.read_meta(LOGS / gpu)) == "cuda-sm_90"
    assert targets.family_time_factor("cuda-sm_90") == targets.GPU_FAMILY_TIME_FACTOR
    assert targets.family_time_factor("x86-avx512") is None and targets.family_time_factor(None) is None


def test_a_gpu_searches_the_other_gpus_of_its_architecture_only(tmp_path):
    root = tmp_path / "logs"
    for gpu in ("nvidia-h100", "nvidia-h200", "cpu-znver4"):
        (root / gpu).mkdir(parents=True)
        shutil.copy(LOGS / gpu / "meta.json", root / gpu / "meta.json")
    a100 = json.loads((LOGS / "nvidia-h200" / "meta.json").read_text())
    a100["target"]["arch"] = "sm_80"
    (root / "nvidia-a100").mkdir()
    (root / "nvidia-a100" / "meta.json").write_text(json.dumps(a100))

    found = tuning_records.family_folders(SM90, root, own="nvidia-h100")
    assert [folder.name for folder, _ in found] == ["nvidia-h200"]
    assert [f.name for f, _ in tuning_records.family_folders(SM90, root, own="nvidia-h200")] == ["nvidia-h100"]
    sm80 = targets.cuda_target_for_arch("sm_80")
    assert [f.name for f, _ in tuning_records.family_folders(sm80, root, own="nvidia-a800")] == ["nvidia-a100"]


def test_how_records_rank(tmp_path):
    """Own records and the architecture's (1.5x slower) by time; another CPU's after every own one."""
    own, gpu = targets.weighed_us(100.0, None), targets.weighed_us(70.0, "cuda-sm_90")
    cpu = targets.weighed_us(1.0, "x86-avx2")
    assert own == (False, 100.0) and gpu == (False, 70.0 * targets.GPU_FAMILY_TIME_FACTOR)
    assert sorted([cpu, own, gpu]) == [own, gpu, cpu]  # 70 us on the H200 counts as 105 here
    assert sorted([targets.weighed_us(60.0, "cuda-sm_90"), own]) == [(False, 90.0), own]


@pytest.fixture
def as_h100(tmp_path, monkeypatch):
    """The committed H100 and H200 folders, and "this GPU" named nvidia-h100."""
    root = tmp_path / "logs"
    for gpu in ("nvidia-h100", "nvidia-h200"):
        shutil.copytree(LOGS / gpu, root / gpu)
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    monkeypatch.setattr(targets, "target_folder_name", lambda target, device_id=0: "nvidia-h100")
    monkeypatch.setattr(tuning_records, "target_folder_name", lambda target, device_id=0: "nvidia-h100")
    return root


def test_an_h100_takes_the_h200s_tile_record_where_it_wins_even_taken_1_5x_slower(as_h100):
    """The headline: the H100's own record (ell-shared-weights, 747 us) against the H200's register-
    reuse tile (its time taken 1.5x slower); set just below and just above the own record's time."""
    p = workload_set("headline")[0]
    kernel = p.sparse_kernel()
    wl = p.workload(kernel)
    scheduled = algorithms.workloads_for(kernel, wl, "cuda")
    generated = algorithms.generated_workloads_for(kernel, wl, "cuda")
    # the H100's own tile records (batch-1 ResNet-50 layers, stop 52) have none of the headline
    assert tile_records.find(as_h100 / "nvidia-h100", "register-reuse", generated[0]) is None

    found = build.generated_record(generated[0], SM90, nonzeros=kernel.nnz)
    assert found is not None and found.folder.name == "nvidia-h200" and found.family == "cuda-sm_90"
    chosen, records = build.choose_generated(kernel, scheduled, generated, SM90)
    assert chosen == generated[0], "the committed H200 tile (211 us) beats the H100's own 747 us record"
    own = [f for f in records if f[3].folder.name == "nvidia-h100"]
    assert own and all(not f[3].travelled for f in own)
    best = min(f[1] for f in records if not f[0])  # the best rival as weighed

    def with_h200_record(us: float):
        tile_records.write(tile_records.path_for(as_h100 / "nvidia-h200", "register-reuse"), "register-reuse",
                           "test", "test", [{"layer": "headline", "shape": tile_records.shape_key(generated[0]),
                                             "tile": found.record["tile"], "seconds": us * 1e-6,
                                             "nonzeros": kernel.nnz}])
        return build.choose_generated(kernel, scheduled, generated, SM90)[0]

    factor = targets.GPU_FAMILY_TIME_FACTOR
    assert with_h200_record(best / factor * 0.95) == generated[0]
    assert with_h200_record(best / factor * 1.05) is None  # faster than the H100's own, but not 1.5x


def test_an_h100_layer_without_its_own_record_takes_the_h200s_scheduled_record(as_h100):
    """A batch-32 layer the H100 never tuned: the H200's MetaSchedule record serves it (marked
    travelled, so `build` checks it against float64 on first use) instead of the untuned template."""
    p = workload_set("resnet50_conv4_3x3_b32")[0]
    kernel = p.sparse_kernel()
    scheduled = algorithms.workloads_for(kernel, p.workload(kernel), "cuda")
    found = build._tuned_records(scheduled, SM90)
    assert found and all(f[3].folder.name == "nvidia-h200" and f[3].family == "cuda-sm_90" for f in found)
    wl, _, source, tuned = build.choose_schedule(scheduled, SM90, found=found)
    assert tuned.travelled and source.endswith("@nvidia-h200 (family cuda-sm_90, verified here)")


@pytest.mark.parametrize("gpu", ["nvidia-h100", "nvidia-h200"])
def test_every_committed_gpu_record_can_be_checked_on_first_use(gpu):
    """The first-use check draws a random kernel with the record's exact format: also for the
    chunked algorithms, whose width is per chunk of input channels (nhwc-direct: a (channel, chunk)
    count; union-tf32: a (group, chunk) union). Before, their check failed on every such record."""
    import numpy as np

    from tvm_sparseconv import verification

    entries = tuning_records._usable_entries(tuning_records.read_meta(LOGS / gpu), LOGS / gpu)
    assert entries
    for i, (_, wl) in enumerate(entries):
        kernel = verification.random_kernel(wl, np.random.default_rng(i))
        assert algorithms.workload_for(kernel, wl, wl.algorithm) == wl


def test_an_h100s_own_record_and_the_h200s_of_one_algorithm_compete_by_weighed_time(as_h100):
    """The ResNet-50 batch-1 3x3 layers under the ell-gather algorithm, tuned on both GPUs: the
    H200's record is taken where it is faster even 1.5x slower, the H100's own elsewhere, and the
    H200's where the H100 has none (conv5 3x3: its H100 record, 21.2 us, ran slower than the H200's,
    14.6 on the H100, and was dropped in stop 56), as the committed records have it. No committed
    layer has both with the H200's winning now, so one layer's H100 time is then set either side
    of the H200's weighed time."""
    factor = targets.GPU_FAMILY_TIME_FACTOR
    picked = {True: 0, False: 0}
    for p in workload_set("resnet50_3x3_b1"):
        kernel = p.sparse_kernel()
        wl = p.workload(kernel)
        own = tuning_records.find_tuned_schedule(wl, SM90, as_h100 / "nvidia-h100")
        other = tuning_records.find_tuned_schedule(wl, SM90, as_h100 / "nvidia-h200")
        assert other is not None, p.name
        chosen = tuning_records.find_tuned_schedule(wl, SM90)
        takes_other = own is None or other.run_us * factor < own.run_us
        assert chosen.folder.name == ("nvidia-h200" if takes_other else "nvidia-h100"), p.name
        assert chosen.travelled == takes_other and chosen.run_us == (other if takes_other else own).run_us
        if own is not None:
            picked[takes_other] += 1
            both = (wl, own, other)
    assert picked[False], f"no layer where both GPUs' records compete: {picked}"
    # the other side on the last such layer: its H100 record's time set just above the H200's weighed
    wl, own, other = both
    meta_path = as_h100 / "nvidia-h100" / tuning_records.META_FILE
    meta = json.loads(meta_path.read_text())
    entry = next(e for e in meta["entries"] if tuning_records.entry_workload(e) == own.tuned_workload)
    for us, takes_other in ((other.run_us * factor * 1.05, True), (other.run_us * factor * 0.95, False)):
        entry["run_us"] = us
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        assert tuning_records.find_tuned_schedule(wl, SM90).travelled == takes_other, us
