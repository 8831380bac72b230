"""Zero-copy exchange through DLPack, proven by data pointers; copies only with InputCopyWarning."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tvm

import tvm_sparseconv
from conftest import aligned_empty, random_input, random_pruned_kernel, reference_conv, rel_err, to_numpy
from tvm_sparseconv import InputCopyWarning, interop

SHAPE = (2, 9, 10, 3)
KSHAPE = (3, 3, 3, 4)


@pytest.fixture
def case(rng):
    """(op, dense kernel) compiled for SHAPE on the CPU."""
    w = random_pruned_kernel(rng, KSHAPE, 0.4)
    op = tvm_sparseconv.compile(tvm_sparseconv.SparseKernel.from_dense(w), SHAPE, target="cpu")
    return op, w


def call_without_copy(op, x):
    """`op(x)`, failing if the input had to be copied."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputCopyWarning)
        return op(x)


def tf_address(t: tf.Tensor) -> int:
    return np.from_dlpack(t).ctypes.data


# --- inputs ---------------------------------------------------------------------------------------
def test_tf_input_is_viewed_in_place(rng):
    """The TVM view of a tf.Tensor points at the tensor's own buffer."""
    x = tf.constant(random_input(rng, SHAPE))
    view = interop.to_tvm(x)
    assert view.data_ptr() == tf_address(x)
    assert tuple(view.shape) == SHAPE


def test_numpy_aligned_input_is_viewed_in_place(rng):
    x = aligned_empty(SHAPE)
    x[...] = random_input(rng, SHAPE)
    assert interop.to_tvm(x).data_ptr() == x.ctypes.data


def test_torch_input_is_viewed_in_place(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(random_input(rng, SHAPE)).clone()
    if x.data_ptr() % interop.ALIGNMENT:
        pytest.skip("torch gave an unaligned allocation")
    assert interop.to_tvm(x).data_ptr() == x.data_ptr()


# --- outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["tensorflow", "numpy", "torch"])
def test_output_handed_over_in_place(rng, framework):
    """from_tvm gives the framework a tensor on the TVM buffer, which it keeps alive."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
    data = random_input(rng, (2, 3, 4, 5))
    t = tvm.runtime.tensor(data, tvm.cpu())
    ptr = t.data_ptr()
    y = interop.from_tvm(t, framework)
    if framework == "tensorflow":
        assert isinstance(y, tf.Tensor)
        assert tf_address(y) == ptr
    elif framework == "numpy":
        assert isinstance(y, np.ndarray)
        assert y.ctypes.data == ptr
    else:
        assert isinstance(y, torch.Tensor)
        assert y.data_ptr() == ptr
    del t
    gc.collect()
    np.testing.assert_array_equal(to_numpy(y), data)


# --- end to end -----------------------------------------------------------------------------------
def test_tf_end_to_end_no_copy(case, rng):
    """op(tf.Tensor): no InputCopyWarning, a tf.Tensor out, correct values."""
    op, w = case
    x_np = random_input(rng, SHAPE)
    x = tf.constant(x_np)
    y = call_without_copy(op, x)
    assert isinstance(y, tf.Tensor) and y.dtype == tf.float32
    assert tf_address(y) % interop.ALIGNMENT == 0  # TVM's own (aligned) allocation
    assert rel_err(y.numpy(), reference_conv(x_np, w)) <= 1e-5


def test_numpy_end_to_end_no_copy(case, rng):
    op, w = case
    x = aligned_empty(SHAPE)
    x[...] = random_input(rng, SHAPE)
    y = call_without_copy(op, x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert rel_err(y, reference_conv(x, w)) <= 1e-5


def test_torch_end_to_end_no_copy(case, rng):
    torch = pytest.importorskip("torch")
    op, w = case
    x_np = random_input(rng, SHAPE)
    x = torch.from_numpy(x_np).clone()
    if x.data_ptr() % interop.ALIGNMENT:
        pytest.skip("torch gave an unaligned allocation")
    y = call_without_copy(op, x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert rel_err(y.numpy(), reference_conv(x_np, w)) <= 1e-5


# --- inputs that must be copied -------------------------------------------------------------------
def test_misaligned_numpy_input_is_copied_with_warning(case, rng):
    """A view starting 1 float after a 64-byte boundary: copied once (warning), still correct."""
    op, w = case
    x = aligned_empty(SHAPE, offset_elems=1)
    x[...] = random_input(rng, SHAPE)
    assert x.ctypes.data % interop.ALIGNMENT != 0 and x.flags.c_contiguous
    with pytest.warns(InputCopyWarning, match="not 64-byte aligned"):
        y = op(x)
    assert rel_err(y, reference_conv(x, w)) <= 1e-5


def test_non_contiguous_numpy_input_is_copied_with_warning(case, rng):
    """Every other column of a wider array: copied once (warning), still correct."""
    op, w = case
    n, h, wd, c = SHAPE
    wide = aligned_empty((n, h, 2 * wd, c))
    wide[...] = random_input(rng, wide.shape)
    x = wide[:, :, ::2]
    assert x.shape == SHAPE and not x.flags.c_contiguous
    with pytest.warns(InputCopyWarning, match="not contiguous"):
        y = op(x)
    assert rel_err(y, reference_conv(np.ascontiguousarray(x), w)) <= 1e-5


def test_read_only_numpy_input_is_copied_with_warning(case, rng):
    """numpy will not export a read-only array over DLPack: copied once (warning), still correct."""
    op, w = case
    x = aligned_empty(SHAPE)
    x[...] = random_input(rng, SHAPE)
    x.setflags(write=False)
    with pytest.warns(InputCopyWarning, match="read-only"):
        y = op(x)
    assert rel_err(y, reference_conv(x, w)) <= 1e-5


def test_copy_warning_points_at_caller(case, rng):
    """The InputCopyWarning is attributed to the caller's line, not to library internals."""
    op, _ = case
    x = aligned_empty(SHAPE, offset_elems=3)
    x[...] = random_input(rng, SHAPE)
    with pytest.warns(InputCopyWarning) as rec:
        op(x)
    ours = [r for r in rec if issubclass(r.category, InputCopyWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__


# --- pooled outputs (CPU) -------------------------------------------------------------------------
def _address(y) -> int:
    return tf_address(y) if isinstance(y, tf.Tensor) else y.ctypes.data


@pytest.mark.parametrize("framework", ["tensorflow", "numpy"])
def test_a_result_still_held_is_never_overwritten(case, rng, framework):
    """Calls while earlier results (or a numpy view of one) are alive get other buffers: every
    earlier result keeps its values, whatever the pool hands out later."""
    op, w = case
    wrap = tf.constant if framework == "tensorflow" else (lambda a: a)
    xs = [aligned_empty(SHAPE) for _ in range(4)]
    for x in xs:
        x[...] = random_input(rng, SHAPE)
    held = [call_without_copy(op, wrap(x)) for x in xs[:3]]  # more results alive than the pool keeps
    assert len({_address(y) for y in held}) == 3
    view = to_numpy(held[2])[1]  # a view outlives its result
    expected_view = np.array(view)
    del held[2]
    gc.collect()
    for _ in range(3):
        call_without_copy(op, wrap(xs[3]))
    for x, y in zip(xs, held):
        assert rel_err(to_numpy(y), reference_conv(x, w)) <= 1e-5
    np.testing.assert_array_equal(view, expected_view)


def test_a_dropped_result_s_buffer_is_reused(case, rng):
    """Once a result is gone, the next call writes into its (already touched) buffer."""
    op, w = case
    x = tf.constant(random_input(rng, SHAPE))
    first = call_without_copy(op, x)
    address = tf_address(first)
    del first
    gc.collect()
    again = call_without_copy(op, x)
    assert tf_address(again) == address
    assert rel_err(again.numpy(), reference_conv(x.numpy(), w)) <= 1e-5
