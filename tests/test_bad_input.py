"""Bad arguments raise clear exceptions that say what was expected; the all-zero kernel works."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tvm_sparseconv
from conftest import aligned_empty, expected_ell_width, random_input, random_pruned_kernel, reference_conv, rel_err
from tvm_sparseconv import SparseKernel

SHAPE = (1, 8, 9, 3)
KSHAPE = (3, 3, 3, 4)


@pytest.fixture
def kernel(rng):
    return SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.3))


@pytest.fixture
def op(kernel):
    return tvm_sparseconv.compile(kernel, SHAPE, target="cpu")


# --- call time ------------------------------------------------------------------------------------
def test_wrong_rank_input(op, rng):
    with pytest.raises(ValueError, match=r"does not match the compiled shape \(1, 8, 9, 3\) \(NHWC\)"):
        op(tf.constant(random_input(rng, SHAPE[1:])))


def test_wrong_spatial_shape(op, rng):
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 8, 3\) does not match the compiled shape"):
        op(tf.constant(random_input(rng, (1, 8, 8, 3))))


def test_wrong_channel_count(op, rng):
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 9, 2\) does not match the compiled shape \(1, 8, 9, 3\)"):
        op(tf.constant(random_input(rng, (1, 8, 9, 2))))


def test_wrong_batch(op, rng):
    with pytest.raises(ValueError, match=r"compiled shape \(1, 8, 9, 3\)"):
        op(tf.constant(random_input(rng, (2, 8, 9, 3))))


@pytest.mark.parametrize("dtype", [tf.float64, tf.int32, tf.float16])
def test_wrong_dtype_tf(op, rng, dtype):
    x = tf.cast(tf.constant(random_input(rng, SHAPE) * 10), dtype)
    with pytest.raises(TypeError, match=f"input dtype must be float32, got {dtype.name}"):
        op(x)


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_wrong_dtype_numpy(op, rng, dtype):
    x = aligned_empty(SHAPE, dtype)
    x[...] = (random_input(rng, SHAPE) * 10).astype(dtype)
    with pytest.raises(TypeError, match="input dtype must be float32"):
        op(x)


def test_python_list_input(op, rng):
    with pytest.raises(TypeError, match="input must be a DLPack tensor .* got list"):
        op(random_input(rng, SHAPE).tolist())


def test_conv2d_python_list_input(kernel, rng):
    with pytest.raises(TypeError, match="x must be a tensor with a shape, got list"):
        tvm_sparseconv.conv2d(random_input(rng, SHAPE).tolist(), kernel, target="cpu")


# --- kernel construction ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernel_not_finite(rng, bad):
    w = random_pruned_kernel(rng, KSHAPE, 0.5)
    w[1, 2, 0, 3] = bad
    with pytest.raises(ValueError, match=r"kernel must be finite; found .* at HWIO index \(1, 2, 0, 3\)"):
        SparseKernel.from_dense(w)


@pytest.mark.parametrize("shape", [(3, 3, 4), (3, 3, 3, 4, 1), (9,)])
def test_kernel_not_4d(rng, shape):
    with pytest.raises(ValueError, match=r"kernel must be HWIO \(KH x KW x Cin x Cout, 4 dims\)"):
        SparseKernel.from_dense(rng.standard_normal(shape).astype(np.float32))


def test_kernel_empty_dimension():
    with pytest.raises(ValueError, match="empty dimension"):
        SparseKernel.from_dense(np.ones((3, 0, 3, 4), np.float32))


def test_kernel_integer_dtype(rng):
    with pytest.raises(TypeError, match="kernel must be float32, got int32"):
        SparseKernel.from_dense(rng.integers(-3, 3, KSHAPE).astype(np.int32))


@pytest.mark.parametrize("threshold", [-0.1, np.nan, np.inf])
def test_bad_threshold(rng, threshold):
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.5), threshold=threshold)


# --- compile time ---------------------------------------------------------------------------------
def test_bias_wrong_length(kernel, rng):
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\) \(one per output channel\), got \(3,\)"):
        tvm_sparseconv.compile(kernel, SHAPE, bias=rng.standard_normal(3).astype(np.float32), target="cpu")


def test_bias_not_finite(kernel):
    with pytest.raises(ValueError, match="bias must be finite"):
        tvm_sparseconv.compile(kernel, SHAPE, bias=np.array([0, np.nan, 0, 0], np.float32), target="cpu")


def test_unknown_activation(kernel):
    with pytest.raises(ValueError, match=r"activation must be one of \(None, 'relu', 'relu6'\), got 'gelu'"):
        tvm_sparseconv.compile(kernel, SHAPE, activation="gelu", target="cpu")


def test_unknown_padding(kernel):
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID' or explicit pairs, got 'FULL'"):
        tvm_sparseconv.compile(kernel, SHAPE, padding="FULL", target="cpu")


def test_bad_explicit_padding(kernel):
    with pytest.raises(ValueError, match=r"explicit padding must be \[\(top, bottom\), \(left, right\)\]"):
        tvm_sparseconv.compile(kernel, SHAPE, padding=[(1, 1)], target="cpu")
    with pytest.raises(ValueError, match="explicit padding must be >= 0"):
        tvm_sparseconv.compile(kernel, SHAPE, padding=[(1, -1), (0, 0)], target="cpu")


@pytest.mark.parametrize("strides", [0, (1, 0), (0, 2), -1])
def test_strides_not_positive(kernel, strides):
    with pytest.raises(ValueError, match="strides must be >= 1"):
        tvm_sparseconv.compile(kernel, SHAPE, strides=strides, target="cpu")


def test_dilations_not_positive(kernel):
    with pytest.raises(ValueError, match="dilations must be >= 1"):
        tvm_sparseconv.compile(kernel, SHAPE, dilations=0, target="cpu")


def test_strides_wrong_length(kernel):
    with pytest.raises(ValueError, match=r"strides must be an int, \(h, w\) or \[1, h, w, 1\]"):
        tvm_sparseconv.compile(kernel, SHAPE, strides=(1, 2, 3), target="cpu")


def test_kernel_not_sparse_kernel(rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    with pytest.raises(TypeError, match=r"kernel must be a SparseKernel \(build one with SparseKernel.from_dense\(w\)\), got ndarray"):
        tvm_sparseconv.compile(w, SHAPE, target="cpu")


def test_input_channels_mismatch_kernel(kernel):
    with pytest.raises(ValueError, match=r"input has 5 channels but the kernel expects 3"):
        tvm_sparseconv.compile(kernel, (1, 8, 9, 5), target="cpu")


@pytest.mark.parametrize("shape", [(8, 9, 3), (1, 1, 8, 9, 3)])
def test_input_shape_not_4d(kernel, shape):
    with pytest.raises(ValueError, match=r"input shape must be NHWC \(4 dims\)"):
        tvm_sparseconv.compile(kernel, shape, target="cpu")


def test_kernel_larger_than_valid_input(kernel):
    """Refused where tf.nn.conv2d refuses it (its output size would be negative)."""
    with pytest.raises(ValueError, match="does not fit the padded input"):
        tvm_sparseconv.compile(kernel, (1, 1, 9, 3), padding="VALID", target="cpu")
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative"):
        tf.nn.conv2d(tf.zeros((1, 1, 9, 3)), tf.zeros(KSHAPE), 1, "VALID")


@pytest.mark.parametrize("shape,strides,padding", [((0, 8, 9, 3), 1, "SAME"), ((1, 2, 9, 3), 1, "VALID"),
                                                   ((2, 0, 9, 3), 2, "SAME"), ((1, 0, 4, 3), 1, [(1, 1), (0, 0)])])
def test_empty_shapes_give_tf_conv2d_output(kernel, rng, shape, strides, padding):
    """Batch 0, a zero-sized image, a kernel fitting zero times: tf.nn.conv2d's output (shape and
    values; an empty input with padding gives activation(bias)), no compile. The reference runs in
    float64: TensorFlow 2.21's float32 oneDNN kernels on an AVX-512 CPU (znver5) return the input's
    shape for an empty input ((0, 8, 9, 3) for 4 output channels); its float64 kernels do not."""
    bias = rng.standard_normal(4).astype(np.float32)
    x = tf.zeros(shape)
    tf_pad = padding if isinstance(padding, str) else [[0, 0], *padding, [0, 0]]
    ref = tf.nn.relu6(tf.nn.conv2d(tf.zeros(shape, tf.float64), kernel.to_dense().astype(np.float64), strides, tf_pad)
                      + bias).numpy().astype(np.float32)
    op = tvm_sparseconv.compile(kernel, shape, strides=strides, padding=padding, bias=bias, activation="relu6",
                                target="cpu")
    assert isinstance(op, tvm_sparseconv.EmptySparseConv2D) and op.output_shape == ref.shape
    y = tvm_sparseconv.conv2d(x, kernel, strides=strides, padding=padding, bias=bias, activation="relu6",
                              target="cpu")
    assert isinstance(y, tf.Tensor) and y.shape == ref.shape
    np.testing.assert_array_equal(y.numpy(), ref)
    np.testing.assert_array_equal(op(np.zeros(shape, np.float32)), ref)
    with pytest.raises(ValueError, match="does not match the compiled shape"):
        op(tf.zeros((1, 8, 9, 3)))


def test_unknown_target(kernel):
    with pytest.raises(ValueError, match="unknown target 'tpu-9000'"):
        tvm_sparseconv.compile(kernel, SHAPE, target="tpu-9000")


# --- the all-zero kernel is valid -----------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "relu6"])
def test_all_zero_kernel_works(rng, activation):
    """A kernel without a single nonzero compiles and returns activation(bias) everywhere."""
    w = np.zeros(KSHAPE, np.float32)
    k = SparseKernel.from_dense(w)
    assert k.nnz == 0 and k.density == 0.0 and k.ell_width == expected_ell_width(0)
    bias = (rng.standard_normal(4) * 4).astype(np.float32)
    op = tvm_sparseconv.compile(k, SHAPE, bias=bias, activation=activation, target="cpu")
    x = random_input(rng, SHAPE)
    y = op(tf.constant(x)).numpy()
    expected = bias if activation is None else np.clip(bias, 0, 6)
    np.testing.assert_array_equal(y, np.broadcast_to(expected, y.shape))
    assert rel_err(y, reference_conv(x, w, bias=bias, activation=activation)) <= 1e-6
