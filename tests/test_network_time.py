"""Whole-network totals from per-layer points: counts, the per-layer choice, wrong and missing layers."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparseconv.network_time import markdown, markdown_with_calls, network_times
from tvm_sparseconv.workloads import GROUP_BLOCK, NETWORKS, TINY, network_sweep, random_pruned_kernel, workload_set


def _points(network: str, sparse: float, fp32: float, tf32: float, correct: bool = True) -> list[dict]:
    return [{"sweep": network, "problem": p.name, "correct": correct,
             "seconds": {"sparse": sparse, "cudnn_fp32": fp32, "cudnn_tf32": tf32}} for p in NETWORKS[network]]


def test_every_resnet50_network_set_has_53_convolutions():
    for problems in NETWORKS.values():
        assert sum(p.count for p in problems) == 53
        assert len({p.name for p in problems}) == len(problems)


def test_totals_weigh_each_shape_by_its_count_and_take_the_faster_per_layer():
    net = network_sweep(1, 90)
    points = _points(net, 2e-6, 3e-6, 1e-6)
    first = NETWORKS[net][0]
    points[0]["seconds"]["sparse"] = 0.5e-6  # sparse beats both dense at the first shape only
    (t,) = network_times(points, "gpu")
    assert t.layers == 53 and t.shapes == len(NETWORKS[net]) and not t.missing
    assert t.dense_fp32 == pytest.approx(53 * 3e-6) and t.dense_default == pytest.approx(53 * 1e-6)
    assert t.chosen_fp32 == pytest.approx(first.count * 0.5e-6 + (53 - first.count) * 2e-6)
    assert t.chosen_default == pytest.approx(first.count * 0.5e-6 + (53 - first.count) * 1e-6)
    assert t.sparse_layers_fp32 == 53 and t.sparse_layers_default == first.count
    assert "resnet50_network_s90_b1" in markdown([t], "gpu")


def test_a_wrong_sparse_result_counts_as_dense_and_a_missing_shape_is_reported():
    net = network_sweep(32, 95)
    points = _points(net, 1e-6, 3e-6, 2e-6, correct=False)[1:]
    (t,) = network_times(points, "gpu")
    assert t.chosen_fp32 == pytest.approx(t.dense_fp32) and t.sparse_layers_fp32 == 0
    assert t.missing == (NETWORKS[net][0].name,)
    assert "of 23 shapes" in markdown([t], "gpu")


def test_per_call_totals_come_from_call_seconds_only_where_measured():
    net = network_sweep(1, 90)
    points = _points(net, 2e-6, 3e-6, 1e-6)
    for p in points:
        p["call_seconds"] = {"sparse": 3e-6, "cudnn_fp32": 20e-6, "cudnn_tf32": 20e-6}
    (device,) = network_times(points, "gpu")
    (per_call,) = network_times(points, "gpu", key="call_seconds")
    assert device.chosen_fp32 == pytest.approx(53 * 2e-6) and device.dense_default == pytest.approx(53 * 1e-6)
    assert per_call.chosen_fp32 == pytest.approx(53 * 3e-6) and per_call.dense_default == pytest.approx(53 * 20e-6)
    assert network_times(_points(net, 2e-6, 3e-6, 1e-6), "gpu", key="call_seconds") == []
    both = markdown_with_calls(points, "gpu")
    assert both.startswith("Device time") and "per call from Python" in both and both.count(net) == 2
    assert markdown_with_calls(_points(net, 2e-6, 3e-6, 1e-6), "gpu") == markdown([device], "gpu")


def test_no_network_points_no_totals():
    assert network_times([{"sweep": "headline", "problem": "headline", "seconds": {"sparse": 1.0}}], "gpu") == []


def test_workload_sets_take_single_problems_by_name():
    proj = "resnet50_conv3_1x1_proj_s2_b32"
    picked = workload_set(f"{proj},tiny")
    assert [p.name for p in picked] == [proj, *(p.name for p in TINY)] and picked[0].strides == 2
    with pytest.raises(KeyError, match="unknown workload set or problem 'nope'"):
        workload_set("tiny,nope")


def test_a_cpu_table_names_its_one_dense_baseline_once():
    net = network_sweep(1, 90)
    points = [{"sweep": net, "problem": p.name, "correct": True, "seconds": {"sparse": 1e-3, "tf_conv2d": 3e-3}}
              for p in NETWORKS[net]]
    table = markdown(network_times(points, "cpu"), "cpu")
    header, _, row = table.splitlines()
    assert header.count("all tf_conv2d ms") == 1 and header.count("|") == 6
    assert row.split("|")[2:5] == [" 159.000 ", " 53.000 ", " **3.00** "]


def test_tf32_mode_total_takes_each_layer_the_fastest_of_three_and_skips_wrong_ones():
    """`bench.py --precision tf32` points: per layer min(TF32-mode sparse if correct, fp32 sparse,
    dense TF32); device time only; its columns appear only where measured."""
    net = network_sweep(32, 90, GROUP_BLOCK)
    points = _points(net, 2e-6, 3e-6, 1e-6)
    first, second = NETWORKS[net][:2]
    points[0]["tf32_mode"] = {"seconds": 0.25e-6, "correct": True}
    points[1]["tf32_mode"] = {"seconds": 0.25e-6, "correct": False}  # wrong: counts as not measured
    for p in points:
        p["call_seconds"] = dict(p["seconds"])
    (t,) = network_times(points, "gpu")
    assert t.chosen_default == pytest.approx(53 * 1e-6)
    assert t.chosen_tf32_mode == pytest.approx(first.count * 0.25e-6 + (53 - first.count) * 1e-6)
    assert t.as_dict()["speedup_tf32_mode"] == pytest.approx(t.dense_default / t.chosen_tf32_mode)
    assert "sparse (TF32 mode) or cudnn_tf32 ms" in markdown([t], "gpu")
    (per_call,) = network_times(points, "gpu", key="call_seconds")
    assert per_call.chosen_tf32_mode is None
    assert "TF32 mode" not in markdown([per_call], "gpu")
    (plain,) = network_times(_points(net, 2e-6, 3e-6, 1e-6), "gpu")
    assert plain.chosen_tf32_mode is None and "speedup_tf32_mode" not in plain.as_dict()


def test_block_pruned_networks_prune_whole_blocks_of_output_channels():
    """The g8 sets: each kernel has whole blocks of 8 output channels at each (kh, kw, ci), exactly
    10% of the blocks kept, the largest by mean magnitude; names and kernels are their own."""
    for batch in (1, 32):
        blocked, plain = NETWORKS[network_sweep(batch, 90, GROUP_BLOCK)], NETWORKS[network_sweep(batch, 90)]
        for b, p in zip(blocked, plain):
            assert (b.name, b.block, b.kernel_shape) == (p.name + "_g8", GROUP_BLOCK, p.kernel_shape)
    for b in NETWORKS[network_sweep(32, 90, GROUP_BLOCK)][::4]:
        w = b.dense_kernel()
        nz = (w != 0).reshape(*w.shape[:-1], -1, GROUP_BLOCK)
        assert np.all(nz.all(-1) | (~nz).all(-1))
        assert nz[..., 0].sum() == round(0.1 * nz[..., 0].size)
    assert workload_set("resnet50_conv2_3x3_b32")[0].sweep == network_sweep(32, 90)
    rng = np.random.default_rng(3)
    w = random_pruned_kernel((1, 1, 4, 16), 0.5, rng, block=8)
    score = np.abs(random_pruned_kernel((1, 1, 4, 16), 1.0, np.random.default_rng(3))).reshape(4, 2, 8).mean(-1)
    assert set(zip(*np.nonzero((w != 0).reshape(4, 2, 8).all(-1)))) == set(
        zip(*np.unravel_index(np.argsort(-score.ravel())[:4], (4, 2))))
    with pytest.raises(ValueError, match="not a multiple of the block 8"):
        random_pruned_kernel((1, 1, 4, 12), 0.5, rng, block=8)


def test_network_runs_compares_runs_per_layer_in_tf32_mode_and_totals_them():
    """`benchmarks/experiments/network_runs.py` (the per-layer tables of the experiment notes): a layer
    reads its TF32-mode time and algorithm, the count of shapes at 1.3x cuDNN TF32 follows the times,
    and the total is network_time's per-layer choice."""
    from conftest import load_script

    table = load_script("benchmarks/experiments/network_runs.py").table
    net = network_sweep(1, 90)
    before = _points(net, 2e-6, 3e-6, 1e-6)
    after = _points(net, 2e-6, 3e-6, 1e-6)
    first = NETWORKS[net][0]
    after[0]["tf32_mode"] = {"seconds": 0.5e-6, "correct": True, "algorithm": "union-tf32"}
    text = table(net, {"before": before, "after": after})
    row = next(line for line in text.splitlines() if line.startswith(f"| {first.name.removeprefix('resnet50_')} |"))
    assert "0.5 (union-tf32) | 1.0 | 2.00" in row and "2.0 (" in row
    assert "- before: per-layer choice 0.053 ms against all-dense cuDNN TF32 0.053 ms (1.00x); 0 of 23" in text
    chosen = (first.count * 0.5e-6 + (53 - first.count) * 1e-6) * 1e3
    assert f"- after: per-layer choice {chosen:.3f} ms" in text and "; 1 of 23 shapes at 1.3x" in text
