"""Strided 1x1 layers on CPUs: the pixels they read copied first, then the stride-1 layer
(`ConvWorkload.subsampled`, `tvm_sparseconv/subsample.py`), checked against TensorFlow in float64."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_sparseconv as tsc
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import Problem

from conftest import random_pruned_kernel, reference_conv, rel_err, run_poisoned


def test_which_layers_are_computed_on_their_subsampled_input():
    wl = ConvWorkload.create((2, 15, 13, 8), (1, 1, 8, 4), 2, (2, 3), "SAME", 1)
    inner = wl.subsampled()
    assert inner.input_shape == (2, 8, 5, 8) and inner.strides == (1, 1) and inner.output_shape == wl.output_shape
    assert ConvWorkload.create((1, 8, 8, 8), (3, 3, 8, 4), 2, 2, "SAME", 1).subsampled() is None  # 3x3
    assert ConvWorkload.create((1, 8, 8, 8), (1, 1, 8, 4), 2, 1, "SAME", 1).subsampled() is None  # stride 1
    assert ConvWorkload.create((1, 8, 8, 8), (1, 1, 8, 4), 2, 2, [(1, 0), (0, 0)], 1).subsampled() is None  # padded
    p = Problem("p", (1, 56, 56, 256), (1, 1, 256, 128), 0.1, strides=2)
    assert p.for_target("cuda") is p
    q = p.for_target("llvm")
    assert q.input_shape == (1, 28, 28, 256) and q.workload() == p.workload().subsampled()
    assert np.array_equal(q.dense_kernel(), p.dense_kernel())  # the same kernel


@pytest.mark.parametrize("shape,k,strides,padding,dilations,bias,activation", [
    ((1, 56, 56, 64), (1, 1, 64, 32), 2, "SAME", 1, False, None),
    ((2, 15, 13, 24), (1, 1, 24, 16), (3, 2), "VALID", 1, True, "relu"),
    ((1, 15, 15, 12), (1, 1, 12, 8), 2, "SAME", 2, True, "relu6"),  # odd size; dilation means nothing at 1x1
    ((3, 9, 10, 5), (1, 1, 5, 7), (1, 4), "VALID", 1, False, None),  # channels not a multiple of 8
])
def test_strided_1x1_layers_match_float64(shape, k, strides, padding, dilations, bias, activation, rng):
    w = random_pruned_kernel(rng, k, 0.3)
    b = rng.standard_normal(k[3]).astype(np.float32) if bias else None
    op = tsc.compile(tsc.SparseKernel.from_dense(w), shape, strides, padding, dilations, b, activation, target="cpu")
    assert op.subsample == ConvWorkload.create(shape, k, 1, strides, padding, dilations).strides
    assert op.input_shape == shape and op.conv_input_shape[1:3] == op.output_shape[1:3]
    x = rng.standard_normal(shape).astype(np.float32)
    ref = reference_conv(x, w, strides, padding, dilations, bias=b, activation=activation)
    assert rel_err(run_poisoned(op, x), ref) < 1e-5
    assert rel_err(np.asarray(op(x)), ref) < 1e-5
    with pytest.raises(ValueError, match="does not match the compiled shape"):
        op(np.zeros(op.conv_input_shape, np.float32))  # the op takes the layer's input, not the copy
