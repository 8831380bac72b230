"""Numerical correctness against `tf.nn.conv2d` in float64, on the CPU target.

Every case runs the op twice: through the low-level `op.run` into an output pre-filled with NaN
(so that an element the kernel forgets to write is caught), and through the normal `op(tf_tensor)`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tvm_sparseconv
from conftest import (
    apply_activation,
    random_input,
    random_pruned_kernel,
    reference_conv,
    rel_err,
    run_poisoned,
)

TOL = 1e-5


def check_conv(
    rng,
    input_shape,
    kernel_shape,
    density=0.3,
    strides=1,
    padding="SAME",
    dilations=1,
    use_bias=False,
    activation=None,
    w=None,
):
    """Compile, run both paths, compare with the float64 reference; returns (y, ref, w, bias)."""
    x = random_input(rng, input_shape)
    if w is None:
        w = random_pruned_kernel(rng, kernel_shape, density)
    bias = rng.standard_normal(kernel_shape[3]).astype(np.float32) if use_bias else None
    kernel = tvm_sparseconv.SparseKernel.from_dense(w)
    op = tvm_sparseconv.compile(
        kernel, x.shape, strides=strides, padding=padding, dilations=dilations,
        bias=bias, activation=activation, target="cpu",
    )
    ref = reference_conv(x, w, strides, padding, dilations, bias, activation)
    assert op.output_shape == ref.shape

    y_low = run_poisoned(op, x)
    assert not np.isnan(y_low).any(), f"{np.isnan(y_low).sum()} output elements never written"
    assert rel_err(y_low, ref) <= TOL, f"op.run: rel err {rel_err(y_low, ref):.3g}"

    y_tf = op(tf.constant(x))
    assert isinstance(y_tf, tf.Tensor)
    y = y_tf.numpy()
    assert y.shape == ref.shape and y.dtype == np.float32
    assert not np.isnan(y).any()
    assert rel_err(y, ref) <= TOL, f"op(tf.Tensor): rel err {rel_err(y, ref):.3g}"
    return y, ref, w, bias


# --- hypothesis grid ------------------------------------------------------------------------------
pads = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.tuples(
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
    ).map(lambda p: [p[0], p[1]]),
)
def out_size(size, pad, k, stride, dilation):
    """Output extent of one spatial axis (may be < 1: no output)."""
    return (size + pad - ((k - 1) * dilation + 1)) // stride + 1


densities = st.one_of(st.sampled_from([0.0, 0.05, 0.3, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 14),
    w=st.integers(1, 14),
    cin=st.integers(1, 6),
    cout=st.integers(1, 7),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    dh=st.integers(1, 2),
    dw=st.integers(1, 2),
    padding=pads,
    density=densities,
    use_bias=st.booleans(),
    activation=st.sampled_from([None, "relu", "relu6"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_grid(n, h, w, cin, cout, kh, kw, sh, sw, dh, dw, padding, density, use_bias, activation, seed):
    """Random shapes, strides, dilations, paddings, densities and epilogues match tf.nn.conv2d."""
    if padding != "SAME":
        (t, b), (l, r) = ((0, 0), (0, 0)) if padding == "VALID" else padding
        assume(out_size(h, t + b, kh, sh, dh) >= 1 and out_size(w, l + r, kw, sw, dw) >= 1)
    check_conv(
        np.random.default_rng(seed), (n, h, w, cin), (kh, kw, cin, cout), density,
        (sh, sw), padding, (dh, dw), use_bias, activation,
    )


# --- cases that must be covered every run -------------------------------------------------------
@pytest.mark.parametrize(
    "input_shape, kernel_shape, kwargs",
    [
        pytest.param((1, 13, 14, 3), (3, 3, 3, 4), dict(strides=3), id="stride3"),
        pytest.param((2, 14, 13, 2), (3, 2, 2, 5), dict(strides=4, padding="VALID"), id="stride4-valid"),
        pytest.param((1, 12, 11, 3), (3, 3, 3, 4), dict(strides=(3, 4)), id="stride3x4"),
        pytest.param((1, 13, 13, 2), (4, 3, 2, 3), dict(strides=4), id="stride4-same"),
        pytest.param((1, 12, 12, 3), (3, 3, 3, 4), dict(dilations=2), id="dilation2"),
        pytest.param((1, 12, 12, 3), (3, 3, 3, 4), dict(dilations=2, strides=2), id="dilation2-stride2"),
        pytest.param((1, 9, 10, 3), (2, 4, 3, 5), {}, id="even-kernel-2x4-same"),
        pytest.param((1, 9, 10, 3), (2, 4, 3, 5), dict(padding="VALID"), id="even-kernel-2x4-valid"),
        pytest.param((1, 8, 12, 2), (1, 5, 2, 3), {}, id="kernel-1x5"),
        pytest.param((1, 12, 8, 2), (5, 1, 2, 3), {}, id="kernel-5x1"),
        pytest.param((2, 10, 9, 3), (3, 3, 3, 4), dict(padding="VALID"), id="valid"),
        pytest.param((2, 10, 9, 3), (3, 3, 3, 4), dict(padding="SAME"), id="same"),
        pytest.param((1, 7, 8, 3), (3, 2, 3, 4), dict(padding=[(0, 2), (3, 1)]), id="explicit"),
        pytest.param((1, 7, 8, 3), (3, 3, 3, 4), dict(padding=[[0, 0], [1, 0], [2, 3], [0, 0]]), id="explicit-tf-form"),
        pytest.param((3, 8, 8, 3), (3, 3, 3, 4), dict(use_bias=True, activation="relu"), id="batch3"),
        pytest.param((1, 9, 9, 4), (3, 3, 4, 6), dict(density=1.0), id="density1"),
        pytest.param((1, 9, 9, 4), (3, 3, 4, 6), dict(density=1.0, use_bias=True, activation="relu6"), id="density1-relu6"),
        pytest.param((1, 1, 1, 2), (1, 1, 2, 3), dict(padding="VALID"), id="1x1-image"),
        # wide rows and many channels: the vectorised column tiles and channel tiles of the schedule
        pytest.param((2, 5, 64, 5), (3, 5, 5, 8), dict(use_bias=True), id="wide-64-tile32"),
        pytest.param((1, 4, 96, 2), (3, 3, 2, 12), dict(strides=2, activation="relu"), id="wide-stride2-tile16"),
        pytest.param((1, 6, 70, 3), (3, 3, 3, 17), {}, id="wide-70-cout17"),
        pytest.param((1, 3, 33, 4), (1, 1, 4, 12), dict(padding="VALID", density=1.0), id="1x1-kernel-ow33"),
        # every tap in the padding: the relayout reads no input (found by test_grid)
        pytest.param((1, 1, 2, 1), (1, 2, 1, 4), dict(strides=2, dilations=(1, 2), padding=[(1, 0), (3, 2)],
                                                      density=0.0, use_bias=True, activation="relu"),
                     id="all-padding-relayout"),
    ],
)
def test_required_cases(rng, input_shape, kernel_shape, kwargs):
    """The shapes and arguments the library must support, every run (not only by chance)."""
    kwargs = dict(kwargs)
    density = kwargs.pop("density", 0.3)
    check_conv(rng, input_shape, kernel_shape, density=density, **kwargs)


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_all_zero_kernel(rng, use_bias, activation):
    """Density 0: every output element is activation(bias) (0 without bias)."""
    y, ref, _, bias = check_conv(
        rng, (2, 6, 7, 3), (3, 3, 3, 5), density=0.0, padding="SAME",
        use_bias=use_bias, activation=activation,
    )
    expected = np.zeros(5, np.float32) if bias is None else bias
    expected = apply_activation(expected, activation)
    np.testing.assert_array_equal(y, np.broadcast_to(expected, y.shape))


def test_output_channel_without_nonzeros(rng):
    """A channel with no nonzeros (others dense-ish) gives exactly activation(bias) in that channel."""
    w = random_pruned_kernel(rng, (3, 3, 4, 6), 0.4)
    w[..., 2] = 0.0
    w[1, 1, 0, 0] = 0.7  # make sure the others are not empty
    w[0, 2, 3, 5] = -0.3
    y, _, _, bias = check_conv(
        rng, (2, 8, 9, 4), (3, 3, 4, 6), w=w, use_bias=True, activation="relu6"
    )
    expected = np.minimum(np.maximum(bias[2], 0.0), 6.0)
    np.testing.assert_array_equal(y[..., 2], np.full(y.shape[:3], expected, np.float32))
    k = tvm_sparseconv.SparseKernel.from_dense(w)
    assert k.nnz_per_output_channel[2] == 0 and k.nnz_per_output_channel.max() > 0


def test_uneven_channel_counts(rng):
    """Channels with very different nonzero counts (ELL padding in most of them) are all right."""
    w = np.zeros((3, 3, 4, 5), np.float32)
    w[..., 0] = random_pruned_kernel(rng, (3, 3, 4), 1.0)  # 36 nonzeros
    w[2, 0, 1, 1] = 0.5  # 1 nonzero
    w[..., 3] = random_pruned_kernel(rng, (3, 3, 4), 0.2)
    check_conv(rng, (1, 9, 8, 4), (3, 3, 4, 5), w=w, strides=2, use_bias=True)


def test_headline_like_shape(rng):
    """The headline layer scaled down: 1x32x64x8 input, 11x11x8x16 kernel at 10% density."""
    check_conv(rng, (1, 32, 64, 8), (11, 11, 8, 16), density=0.1, padding="SAME")


def test_conv2d_one_shot(rng):
    """`tvm_sparseconv.conv2d(x, kernel, ...)` compiles on first use and matches the reference."""
    w = random_pruned_kernel(rng, (3, 3, 3, 4), 0.3)
    k = tvm_sparseconv.SparseKernel.from_dense(w)
    bias = rng.standard_normal(4).astype(np.float32)
    for _ in range(2):  # the second call reuses the cached op
        x = random_input(rng, (2, 9, 8, 3))
        y = tvm_sparseconv.conv2d(tf.constant(x), k, strides=[1, 2, 2, 1], padding="same", bias=bias, activation="relu")
        assert isinstance(y, tf.Tensor)
        ref = reference_conv(x, w, strides=2, padding="SAME", bias=bias, activation="relu")
        assert rel_err(y.numpy(), ref) <= TOL


@pytest.mark.parametrize("rule", ["cpu-direct-tile", "cpu-row-tile"])
@pytest.mark.parametrize("case", [
    ((1, 17, 24, 5), (3, 3, 5, 6), dict(strides=1, padding="SAME")),
    ((2, 15, 13, 4), (5, 3, 4, 8), dict(strides=(2, 3), padding="VALID", use_bias=True, activation="relu")),
    ((1, 20, 16, 3), (3, 3, 3, 4), dict(dilations=2, padding=[(2, 1), (0, 3)], use_bias=True, activation="relu6")),
], ids=["same", "strided-valid-bias-relu", "dilated-explicit-relu6"])
def test_every_cpu_rule_untuned_matches_reference(rng, rule, case):
    """Each CPU rule's untuned template (what a layer without a record of that rule would get if
    the rule were the default), NaN-poisoned output, against float64."""
    import tvm
    from tvm_sparseconv import algorithms, reference, targets, tuning_records
    from tvm_sparseconv.schedules import rule_by_name
    from tvm_sparseconv.workload import ConvWorkload
    from tvm_sparseconv.tir_build import compile_tir

    shape, kshape, kw = case
    w = random_pruned_kernel(rng, kshape, 0.3)
    k = tvm_sparseconv.SparseKernel.from_dense(w)
    has_bias = kw.pop("use_bias", False)
    act = kw.pop("activation", None)
    wl = ConvWorkload.create(shape, kshape, k.ell_width, has_bias=has_bias, activation=act, **kw)
    target = targets.host_cpu_target()
    sch = rule_by_name(rule).apply(tuning_records.workload_module(wl)["main"], target, False)
    f = compile_tir(sch.mod, target)[algorithms.FUNC_NAME]
    x = random_input(rng, shape)
    bias = rng.standard_normal(kshape[3]).astype(np.float32) if has_bias else None
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    f(*[tvm.runtime.tensor(a) for a in [x, *algorithms.pack_weights(wl, k)] + ([bias] if has_bias else [])], out)
    assert rel_err(out.numpy(), reference.conv2d_f64(x, w, wl, bias)) <= TOL
