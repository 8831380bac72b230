"""cpu-csr (stride-1 layers on CPUs: compressed rows, vectors of flattened positions) against float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm

import tvm_sparseconv as tsc
from conftest import random_pruned_kernel, reference_conv, rel_err
from tvm_sparseconv import algorithms, targets
from tvm_sparseconv.schedules.cpu_csr import PTR_STEP, TILES, Plane, pack, ptr_columns
from tvm_sparseconv.workload import ConvWorkload

ALG = algorithms.by_name("cpu-csr")

CASES = [  # (input NHWC, kernel HW, Cout, density, bias, activation, tile, padding, dilation)
    ((1, 7, 7, 200), (1, 1), 72, 0.1, True, "relu", "p32c16", "VALID", 1),  # 49 pixels: a short last block
    ((2, 5, 6, 64), (1, 1), 40, 0.2, False, "relu6", "p16c8", "VALID", 1),  # batch 2, 5 channel blocks
    ((1, 14, 14, 256), (1, 1), 96, 0.1, False, None, "p64c32", "VALID", 1),
    ((1, 3, 3, 30), (1, 1), 24, 0.3, True, None, "p8c64", "VALID", 1),  # fewer channels than a block
    ((1, 4, 4, 16), (1, 1), 8, 0.0, True, "relu", "p16c8", "VALID", 1),  # no nonzeros: bias and activation
    ((1, 7, 7, 64), (3, 3), 48, 0.1, True, "relu", "p32c16", "SAME", 1),  # 7 of every 9 positions kept
    ((2, 9, 11, 20), (3, 3), 24, 0.2, False, None, "p16c8", "SAME", 1),  # batch 2, Cin 20, not square
    ((1, 12, 10, 16), (5, 3), 8, 0.3, False, "relu", "p8c8", "VALID", 1),  # no border: rows of W
    ((1, 13, 13, 24), (3, 3), 16, 0.2, True, None, "p64c16", "SAME", 2),  # dilated: offsets of 2 rows
    ((1, 10, 8, 12), (2, 4), 12, 0.4, False, None, "p128c8", [[0, 0], [2, 1], [0, 3], [0, 0]], 1),  # uneven pads
    ((1, 9, 9, 40), (3, 3), 20, 0.2, True, "relu", "p32c16k8", "SAME", 1),  # 5 chunks of 8 input channels
    ((2, 7, 7, 100), (1, 1), 36, 0.1, False, None, "p64c8k32", "VALID", 1),  # chunks of 32 of 100: a short last
    ((1, 6, 6, 24), (3, 3), 16, 0.3, False, None, "p32c64k64", "SAME", 1),  # a chunk wider than Cin: one pass
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpu_csr_matches_float64(case):
    """Every output written (NaN-poisoned), twice, against float64; an empty output channel."""
    shape, khw, cout, density, with_bias, activation, tile, padding, dilation = CASES[case]
    rng = np.random.default_rng(case)
    w = random_pruned_kernel(rng, (*khw, shape[3], cout), density)
    w[..., 1] = 0.0
    bias = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    kernel = tsc.SparseKernel.from_dense(w)
    wl = algorithms.workload_for(kernel, ConvWorkload.create(shape, w.shape, kernel.ell_width, 1, padding, dilation,
                                                             has_bias=with_bias, activation=activation), ALG.name)
    assert ALG.applies(wl, "llvm")
    f = ALG.build(kernel, wl, TILES[tile], targets.host_cpu_target())["sparse_conv2d"]
    args = [tvm.runtime.tensor(a) for a in ALG.pack(wl, kernel) + ([bias] if with_bias else [])]
    for _ in range(2):
        x = rng.standard_normal(shape).astype(np.float32)
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
        f(tvm.runtime.tensor(x), *args, out)
        got = out.numpy()
        assert np.isfinite(got).all()
        want = reference_conv(x, w, padding=padding, dilations=dilation, bias=bias, activation=activation)
        assert rel_err(got, want) <= 1e-5


def test_pack_keeps_each_row_without_padding():
    """Each nonzero once, its (ci, kh, kw) recoverable from its offset into the channel-major copy."""
    rng = np.random.default_rng(3)
    w = random_pruned_kernel(rng, (3, 3, 50, 12), 0.2)
    kernel = tsc.SparseKernel.from_dense(w)
    wl = ConvWorkload.create((1, 5, 6, 50), w.shape, kernel.ell_width)
    ptr, offsets, vals = pack(wl, kernel)
    plane = Plane.of(wl)
    table = ptr.reshape(12, ptr_columns(50))
    assert table[0, 0] == 0 and table[-1, -1] == kernel.nnz == offsets.size == vals.size
    ptr = np.append(table[:, 0], table[-1, -1])  # row starts
    assert (table[:-1, -1] == table[1:, 0]).all()  # a row's last entry is the next row's start
    for co in range(12):  # each entry: the row's first nonzero of input channel PTR_STEP * i onwards
        ci = offsets[ptr[co]:ptr[co + 1]] // plane.pitch
        np.testing.assert_array_equal(table[co], ptr[co] + np.searchsorted(ci, np.arange(table.shape[1]) * PTR_STEP))
    assert plane.width == 8 and plane.pitch >= plane.copied(128) >= plane.height * plane.width
    dense = np.zeros(w.shape, np.float32)
    for co in range(12):
        ci, tap = np.divmod(offsets[ptr[co]:ptr[co + 1]], plane.pitch)
        dense[tap // plane.width, tap % plane.width, ci, co] = vals[ptr[co]:ptr[co + 1]]
    np.testing.assert_array_equal(dense, w)


@pytest.mark.parametrize("kernel_shape,strides,padding,applies", [
    ((1, 1, 16, 8), 1, "SAME", True),
    ((1, 1, 16, 8), 2, "SAME", False),  # strided: the op's stride phases make it stride 1 first
    ((3, 3, 16, 8), 1, "SAME", True),
    ((3, 3, 16, 8), (1, 2), "SAME", False),
    ((1, 1, 16, 8), 1, [[0, 0], [1, 0], [0, 0], [0, 0]], True),  # explicit padding
])
def test_applies_to_stride_1_layers_on_cpus(kernel_shape, strides, padding, applies):
    wl = ConvWorkload.create((1, 6, 6, 16), kernel_shape, 4, strides, padding)
    assert ALG.applies(wl, "llvm") == applies
    assert not ALG.applies(wl, "cuda")


@pytest.mark.parametrize("ksize,strides", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_compile_forced_cpu_csr_serves_a_layer(rng, ksize, strides):
    """compile(..., algorithm="cpu-csr") end to end, also on strided layers (through their stride phases)."""
    w = random_pruned_kernel(rng, (ksize, ksize, 48, 32), 0.1)
    x = rng.standard_normal((1, 10, 9, 48)).astype(np.float32)
    op = tsc.compile(tsc.SparseKernel.from_dense(w), x.shape, strides=strides, target="cpu", algorithm="cpu-csr")
    assert op.algorithm == "cpu-csr"
    assert rel_err(op(x), reference_conv(x, w, strides=strides)) <= 1e-5


def test_without_any_record_a_cpu_layer_runs_cpu_csrs_default_tile(rng, no_tuning_logs):
    """compile() on a CPU with no record at all: cpu-csr's default tile (measured 1.2-3.7x faster
    than tuned MetaSchedule records), with the untuned warning naming the command that tunes it."""
    w = random_pruned_kernel(rng, (3, 3, 24, 16), 0.2)
    x = rng.standard_normal((1, 20, 18, 24)).astype(np.float32)
    with pytest.warns(tsc.UntunedWarning, match="--algorithm cpu-csr --tiles all"):
        op = tsc.compile(tsc.SparseKernel.from_dense(w), x.shape, target="cpu")
    assert op.algorithm == "cpu-csr" and op.schedule_source == f"untuned:cpu-csr {ALG.default_tile(op.workload)}"
    assert rel_err(op(x), reference_conv(x, w)) <= 1e-5


def test_not_where_the_copy_outgrows_32_bit_offsets():
    big = ConvWorkload.create((40, 1024, 1024, 64), (1, 1, 64, 8), 4)  # 40 x 64 planes of 1M floats
    assert not ALG.applies(big, "llvm")
    assert ALG.applies(ConvWorkload.create((1, 1024, 1024, 64), (1, 1, 64, 8), 4), "llvm")


def _committed_records():
    """(folder, record) of every committed cpu-csr tile record."""
    from tvm_sparseconv import tile_records

    root = Path(__file__).resolve().parents[1] / "tuning_logs"
    return [(f.name, r) for f in sorted(root.glob("cpu-*"))
            for r in tile_records.read(tile_records.path_for(f, ALG.name), ALG.name)]


COMMITTED = _committed_records()


@pytest.mark.parametrize("folder,record", COMMITTED, ids=[f"{f}/{r['layer']}" for f, r in COMMITTED])
def test_committed_records_replay_and_compute_right_here(folder, record):
    """Each committed record: its layer's shape as compile() computes it here, a tile of today's
    emitter, built for this CPU and right against float64."""
    from tvm_sparseconv import tile_records, tile_tuning, verification, workloads

    kernel, wl = tile_tuning.generated_workload(workloads.workload_set(record["layer"])[0], ALG.name, "llvm")
    assert record["shape"] == tile_records.shape_key(wl) and record["nonzeros"] == kernel.nnz
    assert record["tile"] in TILES and record["emitter_version"] == ALG.emitter_version
    f = ALG.build(kernel, wl, TILES[record["tile"]], targets.host_cpu_target())["sparse_conv2d"]
    assert verification.check_generated(f, kernel, wl, tvm.cpu()) <= 1e-5
