"""cpu-csr (1x1 stride-1 layers on CPUs: compressed rows, vectors of pixels) against float64."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_sparseconv as tsc
from conftest import random_pruned_kernel, reference_conv, rel_err
from tvm_sparseconv import algorithms, targets
from tvm_sparseconv.schedules.cpu_csr import TILES, pack
from tvm_sparseconv.workload import ConvWorkload

ALG = algorithms.by_name("cpu-csr")

CASES = [  # (input NHWC, Cout, density, bias, activation, tile)
    ((1, 7, 7, 200), 72, 0.1, True, "relu", "p32c16"),  # 49 pixels: a short last block; Cin 200
    ((2, 5, 6, 64), 40, 0.2, False, "relu6", "p16c8"),  # batch 2, 30 pixels, 5 channel blocks
    ((1, 14, 14, 256), 96, 0.1, False, None, "p64c32"),
    ((1, 3, 3, 30), 24, 0.3, True, None, "p8c64"),  # fewer channels than a block; Cin 30
    ((1, 4, 4, 16), 8, 0.0, True, "relu", "p16c8"),  # no nonzeros at all: bias and activation only
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpu_csr_matches_float64(case):
    """Every output written (NaN-poisoned), twice, against float64; an empty output channel."""
    shape, cout, density, with_bias, activation, tile = CASES[case]
    rng = np.random.default_rng(case)
    w = random_pruned_kernel(rng, (1, 1, shape[3], cout), density)
    w[..., 1] = 0.0
    bias = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    kernel = tsc.SparseKernel.from_dense(w)
    wl = algorithms.workload_for(kernel, ConvWorkload.create(shape, w.shape, kernel.ell_width, has_bias=with_bias,
                                                             activation=activation), ALG.name)
    assert ALG.applies(wl, "llvm")
    f = ALG.build(kernel, wl, TILES[tile], targets.host_cpu_target())["sparse_conv2d"]
    args = [tvm.runtime.tensor(a) for a in ALG.pack(wl, kernel) + ([bias] if with_bias else [])]
    for _ in range(2):
        x = rng.standard_normal(shape).astype(np.float32)
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
        f(tvm.runtime.tensor(x), *args, out)
        got = out.numpy()
        assert np.isfinite(got).all()
        assert rel_err(got, reference_conv(x, w, bias=bias, activation=activation)) <= 1e-5


def test_pack_keeps_each_row_without_padding():
    rng = np.random.default_rng(3)
    w = random_pruned_kernel(rng, (1, 1, 50, 12), 0.2)
    kernel = tsc.SparseKernel.from_dense(w)
    ptr, cols, vals = pack(kernel)
    assert ptr[0] == 0 and ptr[-1] == kernel.nnz == cols.size == vals.size
    dense = np.zeros((50, 12), np.float32)
    for co in range(12):
        dense[cols[ptr[co]:ptr[co + 1]], co] = vals[ptr[co]:ptr[co + 1]]
    np.testing.assert_array_equal(dense, w[0, 0])


@pytest.mark.parametrize("kernel_shape,strides,padding,applies", [
    ((1, 1, 16, 8), 1, "SAME", True),
    ((1, 1, 16, 8), 2, "SAME", False),  # strided: the op's stride phases make it stride 1 first
    ((3, 3, 16, 8), 1, "SAME", False),
    ((1, 1, 16, 8), 1, [[0, 0], [1, 0], [0, 0], [0, 0]], False),  # explicit padding
])
def test_applies_to_unpadded_1x1_stride_1_layers_on_cpus(kernel_shape, strides, padding, applies):
    wl = ConvWorkload.create((1, 6, 6, 16), kernel_shape, 4, strides, padding)
    assert ALG.applies(wl, "llvm") == applies
    assert not ALG.applies(wl, "cuda")


@pytest.mark.parametrize("strides", [1, 2])
def test_compile_forced_cpu_csr_serves_a_layer(rng, strides):
    """compile(..., algorithm="cpu-csr") end to end, also on a strided layer (through its stride phase)."""
    w = random_pruned_kernel(rng, (1, 1, 48, 32), 0.1)
    x = rng.standard_normal((1, 10, 9, 48)).astype(np.float32)
    op = tsc.compile(tsc.SparseKernel.from_dense(w), x.shape, strides=strides, target="cpu", algorithm="cpu-csr")
    assert op.algorithm == "cpu-csr"
    assert rel_err(op(x), reference_conv(x, w, strides=strides)) <= 1e-5
