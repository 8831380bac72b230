"""Compile caches (in memory and on disk), the untuned warning, and use from several threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

import tvm_sparseconv
import tvm_sparseconv.op as op_module
from conftest import random_input, random_pruned_kernel, reference_conv, rel_err, run_poisoned
from tvm_sparseconv import CacheWarning, SparseKernel, UntunedWarning, module_cache

SHAPE = (1, 10, 11, 3)
KSHAPE = (3, 3, 3, 4)


@pytest.fixture
def dense(rng):
    return random_pruned_kernel(rng, KSHAPE, 0.3)


def test_same_arguments_same_object(dense, rng):
    k = SparseKernel.from_dense(dense)
    bias = rng.standard_normal(4).astype(np.float32)
    a = tvm_sparseconv.compile(k, SHAPE, strides=2, bias=bias, activation="relu", target="cpu")
    b = tvm_sparseconv.compile(k, list(SHAPE), strides=(2, 2), bias=bias.copy(), activation="relu", target="cpu")
    assert a is b


def test_different_arguments_different_object(dense, rng):
    """Another input shape, stride, bias, activation, or kernel object: another op."""
    k = SparseKernel.from_dense(dense)
    base = tvm_sparseconv.compile(k, SHAPE, target="cpu")
    other_shape = tvm_sparseconv.compile(k, (2, *SHAPE[1:]), target="cpu")
    assert other_shape is not base and other_shape.input_shape == (2, *SHAPE[1:])
    assert tvm_sparseconv.compile(k, SHAPE, strides=2, target="cpu") is not base
    assert tvm_sparseconv.compile(k, SHAPE, activation="relu", target="cpu") is not base
    b1 = tvm_sparseconv.compile(k, SHAPE, bias=np.ones(4, np.float32), target="cpu")
    b2 = tvm_sparseconv.compile(k, SHAPE, bias=np.full(4, 2.0, np.float32), target="cpu")
    assert b1 is not b2
    assert tvm_sparseconv.compile(SparseKernel.from_dense(dense), SHAPE, target="cpu") is not base


def test_different_kernels_same_pattern_not_mixed_up(rng):
    """Two kernels with the same shape and width get their own weights (the cache is per kernel)."""
    w1 = random_pruned_kernel(rng, KSHAPE, 1.0)
    w2 = random_pruned_kernel(rng, KSHAPE, 1.0)
    x = random_input(rng, SHAPE)
    for w in (w1, w2):
        op = tvm_sparseconv.compile(SparseKernel.from_dense(w), SHAPE, target="cpu")
        assert rel_err(op(tf.constant(x)).numpy(), reference_conv(x, w)) <= 1e-5


def test_disk_cache(cache_dir, rng):
    """After the in-memory cache is cleared, the op is loaded from disk and computes the same."""
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    k = SparseKernel.from_dense(w)
    first = tvm_sparseconv.compile(k, SHAPE, padding="VALID", activation="relu6", target="cpu")
    assert first._build.from_disk_cache is False
    assert first._build.cache_path is not None and first._build.cache_path.is_file()
    assert cache_dir in first._build.cache_path.parents

    op_module._CACHE.clear()
    second = tvm_sparseconv.compile(k, SHAPE, padding="VALID", activation="relu6", target="cpu")
    assert second is not first
    assert second._build.from_disk_cache is True
    assert second._build.cache_path == first._build.cache_path

    x = random_input(rng, SHAPE)
    ref = reference_conv(x, w, padding="VALID", activation="relu6")
    y1, y2 = first(tf.constant(x)).numpy(), second(tf.constant(x)).numpy()
    np.testing.assert_array_equal(y1, y2)
    assert rel_err(y2, ref) <= 1e-5
    assert rel_err(run_poisoned(second, x), ref) <= 1e-5


def test_disk_cache_shared_between_kernels_of_same_width(cache_dir, rng):
    """The disk cache keys on the workload (cpu-csr, the untuned default here: and the count of
    nonzeros), not the weights: another kernel reuses the file."""
    w1 = random_pruned_kernel(rng, KSHAPE, 1.0)
    w2 = random_pruned_kernel(rng, KSHAPE, 1.0)
    a = tvm_sparseconv.compile(SparseKernel.from_dense(w1), SHAPE, target="cpu")
    b = tvm_sparseconv.compile(SparseKernel.from_dense(w2), SHAPE, target="cpu")
    assert b._build.from_disk_cache is True
    x = random_input(rng, SHAPE)
    assert rel_err(a(tf.constant(x)).numpy(), reference_conv(x, w1)) <= 1e-5
    assert rel_err(b(tf.constant(x)).numpy(), reference_conv(x, w2)) <= 1e-5


def test_corrupt_disk_cache_file_is_rebuilt(cache_dir, rng):
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    k = SparseKernel.from_dense(w)
    first = tvm_sparseconv.compile(k, SHAPE, strides=3, target="cpu")
    path = first._build.cache_path
    assert module_cache.verify(path) is None and module_cache.sidecar_path(path).is_file()
    path.write_bytes(b"not a shared library")
    assert "does not match" in module_cache.verify(path) or "size" in module_cache.verify(path)
    op_module._CACHE.clear()
    with pytest.warns(CacheWarning, match="damaged compiled-module cache file .*rebuilding") as rec:
        second = tvm_sparseconv.compile(k, SHAPE, strides=3, target="cpu")
    assert len([r for r in rec if issubclass(r.category, CacheWarning)]) == 1
    assert second._build.from_disk_cache is False
    assert module_cache.verify(path) is None  # replaced
    x = random_input(rng, SHAPE)
    assert rel_err(second(tf.constant(x)).numpy(), reference_conv(x, w, strides=3)) <= 1e-5


def test_untuned_warning(cache_dir, no_tuning_logs, rng):
    """An untuned compile warns once, naming the tune script; the op says it is untuned."""
    k = SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.3))
    with pytest.warns(UntunedWarning, match="scripts/tune.py") as rec:
        op = tvm_sparseconv.compile(k, SHAPE, target="cpu")
    ours = [r for r in rec if issubclass(r.category, UntunedWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__  # once, at the caller's line
    assert op.tuned is False and op.schedule_source.startswith("untuned")


def test_concurrent_calls(rng):
    """8 threads x 5 calls on one op, each with its own input, all match the reference."""
    w = random_pruned_kernel(rng, (3, 3, 4, 6), 0.3)
    shape = (2, 16, 17, 4)
    op = tvm_sparseconv.compile(SparseKernel.from_dense(w), shape, bias=np.arange(6, dtype=np.float32), target="cpu")
    seeds = rng.integers(0, 2**63, size=8)
    barrier = threading.Barrier(8)

    def worker(seed):
        r = np.random.default_rng(seed)
        barrier.wait()
        errs = []
        for _ in range(5):
            x = random_input(r, shape)
            y = op(tf.constant(x)).numpy()
            errs.append(rel_err(y, reference_conv(x, w, bias=np.arange(6, dtype=np.float32))))
        return max(errs)

    with ThreadPoolExecutor(8) as pool:
        errs = list(pool.map(worker, seeds))
    assert max(errs) <= 1e-5, errs


def test_concurrent_compile_same_workload(rng):
    """4 threads compiling the same new workload at once all get the same op."""
    k = SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.3))
    shape = (1, 13, 12, 3)
    barrier = threading.Barrier(4)

    def worker(_):
        barrier.wait()
        return tvm_sparseconv.compile(k, shape, padding=[(1, 2), (0, 1)], dilations=2, target="cpu")

    with ThreadPoolExecutor(4) as pool:
        ops = list(pool.map(worker, range(4)))
    assert all(o is ops[0] for o in ops)
    assert op_module._KEY_LOCKS == {} or all(key[0] != id(k) for key in op_module._KEY_LOCKS)


def test_cache_does_not_keep_kernel_alive(rng):
    """The in-memory cache is weak in the kernel: once kernel and op are dropped, both are freed."""
    import gc
    import weakref

    k = SparseKernel.from_dense(random_pruned_kernel(rng, KSHAPE, 0.3))
    op = tvm_sparseconv.compile(k, SHAPE, target="cpu")
    k_ref, op_ref = weakref.ref(k), weakref.ref(op)
    del k, op
    gc.collect()
    assert k_ref() is None, "op._CACHE keeps the kernel (and its compiled ops) alive forever"
    assert op_ref() is None


def test_a_fresh_build_is_served_from_the_library_it_stored(cache_dir, rng):
    """After building, the cache hands back the shared library it just wrote, not the in-memory LLVM
    module (whose first lookup would generate the machine code a second time), and it computes."""
    w = random_pruned_kernel(rng, KSHAPE, 0.3)
    op = tvm_sparseconv.compile(SparseKernel.from_dense(w), SHAPE, target="cpu")
    assert op._build.from_disk_cache is False
    assert op._build.module.kind == "library"
    assert not list(cache_dir.rglob(".*.so"))  # the private link it was loaded through is gone
    x = random_input(rng, SHAPE)
    assert rel_err(op(tf.constant(x)).numpy(), reference_conv(x, w)) <= 1e-5


def test_a_library_replaced_on_disk_is_loaded_anew_not_from_the_old_handle(tmp_path):
    """dlopen returns the handle of a library already open under the same path even after the file
    was replaced: a rebuilt artifact must be loaded as the new file."""
    import tvm
    from tvm import te

    def build(scale: float):
        a = te.placeholder((4,), name="A")
        b = te.compute((4,), lambda i: a[i] * scale, name="B")
        return lambda: tvm.compile(te.create_prim_func([a, b]).with_attr("global_symbol", "f"), target="llvm")

    path = tmp_path / "m.so"
    first, _ = module_cache.load_or_build(path, build(2.0), "f")
    for name in (path, module_cache.sidecar_path(path)):
        name.unlink()  # gone from disk, still loaded in this process
    second, from_disk = module_cache.load_or_build(path, build(3.0), "f")
    assert from_disk is False
    x = tvm.runtime.tensor(np.ones(4, np.float32))
    out = tvm.runtime.tensor(np.zeros(4, np.float32))
    second["f"](x, out)
    assert out.numpy().tolist() == [3.0] * 4
    first["f"](x, out)
    assert out.numpy().tolist() == [2.0] * 4
