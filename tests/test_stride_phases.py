"""Strided layers on CPUs: the input's stride phases copied first, then the stride-1 layer on them
(`tvm_sparseconv/stride_phases.py`), checked against TensorFlow in float64."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_sparseconv as tsc
from tvm_sparseconv.reference import conv2d_f64
from tvm_sparseconv.stride_phases import StridePhases, phase_function
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import Problem

from conftest import random_pruned_kernel, reference_conv, rel_err, run_poisoned

# (input, kernel, strides, padding, dilations): odd and even sizes, kernels shorter and longer than
# the stride, explicit padding past one stride, a dilation along the axis without a stride.
GEOMETRIES = [
    ((2, 15, 13, 5), (3, 3, 5, 4), 2, "SAME", 1),
    ((1, 17, 16, 3), (7, 7, 3, 6), 2, "SAME", 1),
    ((1, 16, 17, 8), (5, 4, 8, 4), (3, 2), "VALID", 1),
    ((1, 9, 9, 8), (1, 1, 8, 4), 2, "VALID", 1),
    ((1, 12, 11, 4), (3, 3, 4, 2), 2, [(2, 1), (0, 3)], 1),
    ((1, 12, 11, 8), (3, 1, 8, 2), (2, 1), "SAME", (1, 2)),
    ((1, 10, 10, 8), (2, 2, 8, 3), 3, "SAME", 1),
]


@pytest.mark.parametrize("shape,k,strides,padding,dilations", GEOMETRIES)
def test_the_phased_layer_is_the_strided_layer(shape, k, strides, padding, dilations, rng):
    """In float64: the stride-1 VALID layer on the phases with the phased kernel gives the layer's
    output; the compiled copy writes exactly the numpy phases (every element: NaN-poisoned first)."""
    wl = ConvWorkload.create(shape, k, 1, strides, padding, dilations)
    phases = StridePhases.of(wl)
    inner = phases.workload(wl)
    assert inner.strides == (1, 1) and inner.pads == ((0, 0), (0, 0)) and inner.output_shape == wl.output_shape
    x = rng.standard_normal(shape).astype(np.float32)
    w = random_pruned_kernel(rng, k, 0.5)
    np.testing.assert_allclose(conv2d_f64(phases.gather(x), phases.dense_kernel(w), inner), conv2d_f64(x, w, wl),
                               rtol=1e-12, atol=1e-12)
    kernel = tsc.SparseKernel.from_dense(w)
    assert phases.kernel(kernel).nnz == kernel.nnz
    y = tvm.runtime.tensor(np.full(phases.shape, np.nan, np.float32))
    phase_function(phases, "llvm")(tvm.runtime.tensor(x), y)
    assert np.array_equal(y.numpy(), phases.gather(x))


def test_which_layers_run_on_their_phases():
    wl = ConvWorkload.create((2, 15, 13, 8), (1, 1, 8, 4), 2, (2, 3), "SAME", 1)
    phases = StridePhases.of(wl)  # a strided 1x1 layer without padding: every stride-th pixel
    assert phases.phases == (1, 1) and phases.shape == (2, 8, 5, 8)
    wl3 = ConvWorkload.create((1, 28, 28, 8), (3, 3, 8, 4), 2, 2, "SAME", 1)
    assert StridePhases.of(wl3).shape == (1, 15, 15, 32) and StridePhases.of(wl3).workload(wl3).kernel_shape == (2, 2, 32, 4)
    assert StridePhases.of(ConvWorkload.create((1, 8, 8, 8), (3, 3, 8, 4), 2, 1, "SAME", 1)) is None  # stride 1
    assert StridePhases.of(ConvWorkload.create((1, 16, 16, 8), (3, 3, 8, 4), 2, 2, "SAME", 2)) is None  # dilated
    assert StridePhases.of(ConvWorkload.create((1, 0, 8, 8), (3, 3, 8, 4), 2, 2, "SAME", 1, allow_empty=True)) is None
    p = Problem("p", (1, 56, 56, 256), (1, 1, 256, 128), 0.1, strides=2)
    assert p.for_target("cuda") is p
    q = p.for_target("llvm")
    assert q.input_shape == (1, 28, 28, 256) and q.workload() == StridePhases.of(p.workload()).workload(p.workload())
    assert np.array_equal(q.dense_kernel(), p.dense_kernel())  # one phase: the same kernel
    r = Problem("r", (1, 28, 28, 16), (3, 3, 16, 8), 0.1, strides=2).for_target("llvm")
    assert r.kernel_shape == (2, 2, 64, 8) and r.strides == 1 and r.padding == "VALID" and r.layer.strides == 2
    assert r.sparse_kernel().nnz == Problem("r", (1, 28, 28, 16), (3, 3, 16, 8), 0.1).sparse_kernel().nnz


@pytest.mark.parametrize("shape,k,strides,padding,dilations,bias,activation", [
    ((1, 56, 56, 64), (1, 1, 64, 32), 2, "SAME", 1, False, None),
    ((2, 15, 13, 24), (1, 1, 24, 16), (3, 2), "VALID", 1, True, "relu"),
    ((1, 15, 15, 12), (1, 1, 12, 8), 2, "SAME", 2, True, "relu6"),  # odd size; dilation means nothing at 1x1
    ((3, 9, 10, 5), (1, 1, 5, 7), (1, 4), "VALID", 1, False, None),  # channels not a multiple of 8
    ((1, 28, 28, 16), (3, 3, 16, 24), 2, "SAME", 1, True, "relu"),  # ResNet's stride-2 3x3, small
    ((2, 19, 18, 3), (7, 7, 3, 8), 2, "SAME", 1, False, None),  # conv1's 7x7 on 3 channels
    ((1, 13, 14, 8), (3, 3, 8, 4), (3, 2), [(2, 0), (1, 2)], 1, True, None),  # explicit padding
    ((1, 12, 11, 8), (3, 1, 8, 2), (2, 1), "SAME", (1, 2), False, "relu"),  # dilation along a one-tap axis
])
def test_strided_layers_match_float64(shape, k, strides, padding, dilations, bias, activation, rng):
    w = random_pruned_kernel(rng, k, 0.3)
    b = rng.standard_normal(k[3]).astype(np.float32) if bias else None
    op = tsc.compile(tsc.SparseKernel.from_dense(w), shape, strides, padding, dilations, b, activation, target="cpu")
    wl = ConvWorkload.create(shape, k, 1, strides, padding, dilations)
    assert op.phases == StridePhases.of(wl) and op.phases is not None
    assert op.input_shape == shape and op.conv_input_shape == op.phases.shape
    x = rng.standard_normal(shape).astype(np.float32)
    ref = reference_conv(x, w, strides, padding, dilations, bias=b, activation=activation)
    assert rel_err(run_poisoned(op, x), ref) < 1e-5
    assert rel_err(np.asarray(op(x)), ref) < 1e-5
    with pytest.raises(ValueError, match="does not match the compiled shape"):
        op(np.zeros(op.conv_input_shape, np.float32))  # the op takes the layer's input, not the copy


def test_strided_reads_remain_available(rng):
    """`phase_strided = False` computes the layer with strided reads (what the experiments compare)."""
    w = random_pruned_kernel(rng, (3, 3, 8, 4), 0.3)
    kernel = tsc.SparseKernel.from_dense(w)
    wl = ConvWorkload.create((1, 14, 14, 8), w.shape, kernel.ell_width, 2, "SAME", 1)
    try:
        tsc.op.SparseConv2D.phase_strided = False
        op = tsc.op.SparseConv2D(kernel, wl, tvm.target.Target("llvm"), None)
    finally:
        tsc.op.SparseConv2D.phase_strided = True
    assert op.phases is None and op.conv_input_shape == (1, 14, 14, 8)
    x = rng.standard_normal(wl.input_shape).astype(np.float32)
    assert rel_err(run_poisoned(op, x), reference_conv(x, w, 2, "SAME")) < 1e-5


def test_the_untuned_warning_names_the_layer_to_tune(rng):
    """The tune command of a phased layer's warning tunes the layer as the user has it (tune.py
    phases it the same way), not the phased workload (whose kernel the user does not have)."""
    w = random_pruned_kernel(rng, (3, 3, 8, 4), 0.3)
    with pytest.warns(tsc.UntunedWarning) as caught:
        op = tsc.compile(tsc.SparseKernel.from_dense(w), (1, 11, 13, 8), 2, "SAME", target="cpu")
    message = str(caught[0].message)
    assert op.layer_workload.strides == (2, 2) and op.workload.strides == (1, 1)
    assert "computing 1x11x13x8 * 3x3x8x4" in message
    assert "--input-shape 1,11,13,8 --strides 2,2" in message and "--padding 1,1,1,1" in message
