"""SparseKernel: conversion from dense kernels, its properties, and the checked .npz file format."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import expected_ell_width, random_pruned_kernel
from tvm_sparseconv import SparseKernel, SparseKernelFormatError, algorithms
from tvm_sparseconv.workload import ConvWorkload

KSHAPE = (3, 2, 4, 5)


def expected_counts(w, threshold=0.0):
    return (np.abs(w) > threshold).reshape(-1, w.shape[3]).sum(axis=0)


# --- construction ---------------------------------------------------------------------------------
def test_from_dense_numpy(rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    k = SparseKernel.from_dense(w)
    assert k.shape == KSHAPE
    np.testing.assert_array_equal(k.to_dense(), w)


def test_from_dense_tf_tensor(rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    k = SparseKernel.from_dense(tf.constant(w))
    assert k.shape == KSHAPE
    np.testing.assert_array_equal(k.to_dense(), w)


def test_from_dense_float64_is_converted(rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.3).astype(np.float64)
    k = SparseKernel.from_dense(w)
    assert k.values.dtype == np.float32
    np.testing.assert_array_equal(k.to_dense(), w.astype(np.float32))


def test_threshold_drops_small_magnitudes(rng):
    """Entries with |w| <= threshold are dropped (the boundary too), larger ones are kept."""
    w = random_pruned_kernel(rng, KSHAPE, 1.0)  # |w| in [0.1, 1)
    w[0, 0, 0, 0], w[0, 1, 0, 0], w[1, 0, 0, 0] = 0.5, -0.5, 0.50001
    k = SparseKernel.from_dense(w, threshold=0.5)
    np.testing.assert_array_equal(k.to_dense(), np.where(np.abs(w) > 0.5, w, 0))
    dense = k.to_dense()
    assert dense[0, 0, 0, 0] == 0 and dense[0, 1, 0, 0] == 0 and dense[1, 0, 0, 0] == np.float32(0.50001)
    np.testing.assert_array_equal(k.nnz_per_output_channel, expected_counts(w, 0.5))


def test_properties(rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.4)
    w[..., 1] = 0.0  # an empty channel
    w[..., 3] = random_pruned_kernel(rng, KSHAPE[:3], 1.0)  # a full one: 24 nonzeros
    k = SparseKernel.from_dense(w)
    counts = expected_counts(w)
    assert k.nnz == int(np.count_nonzero(w)) == counts.sum()
    assert k.density == pytest.approx(np.count_nonzero(w) / w.size)
    np.testing.assert_array_equal(k.nnz_per_output_channel, counts)
    assert k.nnz_per_output_channel[1] == 0
    assert counts.max() == 3 * 2 * 4
    assert k.ell_width == expected_ell_width(counts.max())
    assert k.values.shape == k.kh.shape == k.kw.shape == k.ci.shape == (5, k.ell_width)
    assert "nnz=" in repr(k)


def test_ell_layout(rng):
    """Per channel: nonzeros sorted by (ci, kh, kw), then zero padding at index (0, 0, 0)."""
    w = random_pruned_kernel(rng, KSHAPE, 0.5)
    k = SparseKernel.from_dense(w)
    for co in range(KSHAPE[3]):
        c = int(k.counts[co])
        pos = list(zip(k.ci[co, :c], k.kh[co, :c], k.kw[co, :c]))
        assert pos == sorted(pos) and len(set(pos)) == c
        np.testing.assert_array_equal(k.values[co, :c], [w[h, x, i, co] for i, h, x in pos])
        assert not k.values[co, c:].any() and not k.kh[co, c:].any() and not k.ci[co, c:].any()


def test_all_zero_kernel(rng):
    k = SparseKernel.from_dense(np.zeros(KSHAPE, np.float32))
    assert k.nnz == 0 and k.density == 0.0 and k.ell_width == expected_ell_width(0) >= 1
    assert not k.values.any()
    assert not k.to_dense().any()


def test_arrays_are_read_only(rng):
    k = SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.3))
    with pytest.raises(ValueError):
        k.values[0, 0] = 1.0


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_to_dense_round_trip(rng, density):
    w = random_pruned_kernel(rng, (5, 4, 3, 6), density)
    np.testing.assert_array_equal(SparseKernel.from_dense(w).to_dense(), w)


# --- save / load ----------------------------------------------------------------------------------
def assert_same_kernel(a: SparseKernel, b: SparseKernel):
    assert a.shape == b.shape
    for name in ("values", "kh", "kw", "ci", "counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("density", [0.0, 0.2, 1.0])
def test_save_load_round_trip(rng, tmp_path, density):
    k = SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, density))
    path = tmp_path / "k.npz"
    k.save(path)
    assert not os.path.exists(str(path) + ".tmp")
    loaded = SparseKernel.load(path)
    assert_same_kernel(loaded, k)
    np.testing.assert_array_equal(loaded.to_dense(), k.to_dense())
    SparseKernel.load(str(path))  # str paths too


@pytest.fixture
def saved(rng, tmp_path):
    """(path, dict of arrays) of a valid saved kernel with some padding in its ELL rows."""
    w = random_pruned_kernel(rng, KSHAPE, 0.5)
    w[..., 0] = random_pruned_kernel(rng, KSHAPE[:3], 1.0)  # widest channel: others are padded
    w[..., 2] = 0.0
    path = tmp_path / "k.npz"
    SparseKernel.from_dense(w).save(path)
    with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    return path, arrays


def write_modified(path, arrays, **changes):
    new = dict(arrays)
    for name, value in changes.items():
        if value is None:
            new.pop(name)
        else:
            new[name] = value
    np.savez(path, **new)
    return path


def test_load_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SparseKernelFormatError, match="not a readable .npz file"):
        SparseKernel.load(path)


def test_load_random_bytes(tmp_path, rng):
    path = tmp_path / "noise.npz"
    path.write_bytes(rng.bytes(4096))
    with pytest.raises(SparseKernelFormatError, match=f"{path}: not a readable .npz file"):
        SparseKernel.load(path)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(SparseKernelFormatError, match="not a readable .npz file"):
        SparseKernel.load(path)


def test_load_foreign_npz(tmp_path, rng):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=rng.standard_normal((3, 3)), bias=rng.standard_normal(3))
    with pytest.raises(SparseKernelFormatError, match=r"not a SparseKernel file: expected arrays .*found \['bias', 'weights'\]"):
        SparseKernel.load(path)


def test_load_plain_npy(tmp_path, rng):
    """A bare .npy array (np.load gives an ndarray, not an archive) is not a kernel file."""
    path = tmp_path / "w.npy"
    np.save(path, rng.standard_normal((3, 3, 2, 2)))
    with pytest.raises(SparseKernelFormatError):
        SparseKernel.load(path)


def test_load_wrong_format_version(saved):
    path, arrays = saved
    write_modified(path, arrays, format_version=np.array(2))
    with pytest.raises(SparseKernelFormatError, match="format version 2, this library reads version 1"):
        SparseKernel.load(path)


def test_load_wrong_format_name(saved):
    path, arrays = saved
    write_modified(path, arrays, format=np.array("something.else"))
    with pytest.raises(SparseKernelFormatError, match="format is 'something.else', expected"):
        SparseKernel.load(path)


def test_load_missing_array(saved):
    path, arrays = saved
    write_modified(path, arrays, kw=None)
    with pytest.raises(SparseKernelFormatError, match="not a SparseKernel file"):
        SparseKernel.load(path)


@pytest.mark.parametrize("name, limit", [("kh", 3), ("kw", 2), ("ci", 4)])
def test_load_index_out_of_range(saved, name, limit):
    path, arrays = saved
    bad = arrays[name].copy()
    bad[0, 0] = limit
    write_modified(path, arrays, **{name: bad})
    with pytest.raises(SparseKernelFormatError, match=rf"{name} indices must lie in \[0, {limit}\)"):
        SparseKernel.load(path)


def test_load_negative_index(saved):
    path, arrays = saved
    bad = arrays["ci"].copy()
    bad[1, 0] = -1
    write_modified(path, arrays, ci=bad)
    with pytest.raises(SparseKernelFormatError, match=r"ci indices must lie in \[0, 4\)"):
        SparseKernel.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_load_non_finite_values(saved, bad):
    path, arrays = saved
    values = arrays["values"].copy()
    values[0, 1] = bad
    write_modified(path, arrays, values=values)
    with pytest.raises(SparseKernelFormatError, match="values contain NaN or Inf"):
        SparseKernel.load(path)


def test_load_counts_out_of_range(saved):
    path, arrays = saved
    counts = arrays["counts"].copy()
    counts[1] = arrays["values"].shape[1] + 1
    write_modified(path, arrays, counts=counts)
    with pytest.raises(SparseKernelFormatError, match="counts must lie in"):
        SparseKernel.load(path)


def test_load_nonzero_padding(saved):
    path, arrays = saved
    values = arrays["values"].copy()
    values[2, -1] = 1.0  # channel 2 is empty: all of its row is padding
    write_modified(path, arrays, values=values)
    with pytest.raises(SparseKernelFormatError, match="padding entries beyond each channel's count must be 0"):
        SparseKernel.load(path)


def test_load_duplicate_position(saved):
    path, arrays = saved
    kh, kw, ci = (arrays[n].copy() for n in ("kh", "kw", "ci"))
    kh[0, 1], kw[0, 1], ci[0, 1] = kh[0, 0], kw[0, 0], ci[0, 0]
    write_modified(path, arrays, kh=kh, kw=kw, ci=ci)
    with pytest.raises(SparseKernelFormatError, match="stored twice"):
        SparseKernel.load(path)


def test_load_wrong_values_dtype(saved):
    path, arrays = saved
    write_modified(path, arrays, values=arrays["values"].astype(np.float64))
    with pytest.raises(SparseKernelFormatError, match="values must be float32"):
        SparseKernel.load(path)


def test_load_bad_shape(saved):
    path, arrays = saved
    write_modified(path, arrays, shape=np.array([3, 2, 4]))
    with pytest.raises(SparseKernelFormatError, match=r"shape must be 4 positive ints \(HWIO\)"):
        SparseKernel.load(path)


def test_load_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        SparseKernel.load(tmp_path / "does-not-exist.npz")


def _reversed_rows(kernel, path):
    """`kernel` saved and loaded back with each channel's entries in reverse order (a valid file,
    if not what from_dense writes)."""
    kernel.save(path)
    with np.load(path) as d:
        arrays = dict(d)
    for name in ("values", "kh", "kw", "ci"):
        a = arrays[name].copy()
        for co, n in enumerate(arrays["counts"]):
            a[co, :n] = a[co, :n][::-1]
        arrays[name] = a
    np.savez(path, **arrays)
    return SparseKernel.load(path)


@pytest.mark.parametrize("algorithm,ksize", [("cpu-csr", 3), ("csr-split-k", 1), ("nhwc-direct", 3)])
def test_a_kernel_stored_out_of_order_loads_sorted(tmp_path, rng, algorithm, ksize):
    """Packers rely on each channel's nonzeros sorted by input channel (csr-split-k's blocks read
    only their chunk's input channels, nhwc-direct's chunks are runs, cpu-csr's chunks keep theirs
    in L1): a valid kernel file stored in another order loads sorted and packs as from_dense's."""
    w = random_pruned_kernel(rng, (ksize, ksize, 40, 12), 0.2)
    k = SparseKernel.from_dense(w)
    shuffled = _reversed_rows(k, tmp_path / "k.npz")
    with np.load(tmp_path / "k.npz") as d:
        assert not np.array_equal(d["ci"], k.ci)  # the file is out of order
    for name in ("values", "kh", "kw", "ci", "counts"):
        np.testing.assert_array_equal(getattr(shuffled, name), getattr(k, name))
    wl = ConvWorkload.create((1, 9, 9, 40), w.shape, k.ell_width)
    packs = [algorithms.pack_weights(algorithms.workload_for(kk, wl, algorithm), kk) for kk in (k, shuffled)]
    for a, b in zip(*packs):
        np.testing.assert_array_equal(a, b)
