"""Shared fixtures and helpers of the tvm_sparseconv test suite.

The environment is set at import time, before TensorFlow or the library is imported:
the compiled-module disk cache goes to a private temporary folder for this session (the TensorFlow
op library stays in the user's cache, where `make setup` built it).
Helpers (`reference_conv`, `rel_err`, `random_pruned_kernel`, ...) are plain functions; test
modules import them with `from conftest import ...`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# The TensorFlow op library stays where `make setup` built it (keyed by its source and TensorFlow,
# so never stale); only compiled conv modules go to the session's private cache.
os.environ.setdefault("TVM_SPARSECONV_TF_OP_DIR", os.path.join(
    os.environ.get("TVM_SPARSECONV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tvm_sparseconv")),
    "tf_op"))
_SESSION_CACHE = tempfile.mkdtemp(prefix="tvm_sparseconv_test_cache_")
os.environ["TVM_SPARSECONV_CACHE"] = _SESSION_CACHE
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
try:  # the GPU machine has no TensorFlow; only its GPU tests run there
    import tensorflow as tf  # noqa: E402
except ImportError:  # pragma: no cover
    tf = None

import tvm_sparseconv  # noqa: E402,F401 - imported after the env vars above are set
from tvm_sparseconv import targets  # noqa: E402

ACTIVATIONS = (None, "relu", "relu6")


# --- pytest hooks -----------------------------------------------------------------------------
def load_script(relative: str, name: str | None = None):
    """A script of the repository (`scripts/`, `benchmarks/experiments/`: not packages), by its
    path from the repository root, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_blocks(mod) -> int:
    """Thread blocks a scheduled module launches (the product of its blockIdx.x bindings)."""
    import re

    return int(np.prod([int(b) for b in re.findall(r'T\.thread_binding\((\d+), thread="blockIdx\.x"\)',
                                                    mod.script())]))


def pytest_configure(config):
    """Silence UntunedWarning (every compile here is untuned) and register the markers."""
    config.addinivalue_line("filterwarnings", "ignore::tvm_sparseconv.UntunedWarning")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped when TVM sees none)")
    config.addinivalue_line("markers", "slow: long-running")


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when TVM sees no CUDA device."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items or targets.gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to TVM (tvm_sparseconv.targets.gpu_available())")
    for it in gpu_items:
        it.add_marker(skip)


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def rng():
    """A freshly seeded numpy Generator; the seed is printed so that a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**63)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private, empty disk cache for one test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("TVM_SPARSECONV_CACHE", str(d))
    return d


@pytest.fixture
def no_tuning_logs(tmp_path, monkeypatch):
    """An empty tuning-log folder, so that every compile in the test is untuned."""
    d = tmp_path / "tuning_logs"
    d.mkdir()
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(d))
    return d


# --- helpers ----------------------------------------------------------------------------------
def random_pruned_kernel(rng, shape, density) -> np.ndarray:
    """A float32 HWIO kernel with roughly `density` of its entries nonzero (0 and 1 are exact).

    Nonzeros are drawn away from zero (|w| >= 0.1) so that none is lost to a threshold of 0.
    """
    shape = tuple(int(d) for d in shape)
    mag = rng.uniform(0.1, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    if density >= 1.0:
        keep = np.ones(shape, bool)
    elif density <= 0.0:
        keep = np.zeros(shape, bool)
    else:
        keep = rng.random(shape) < density
    return np.where(keep, mag, 0.0).astype(np.float32)


def expected_ell_width(max_count: int) -> int:
    """The ELL width the library should pick for a kernel whose fullest channel has `max_count`."""
    from tvm_sparseconv import kernel as kernel_module

    align = int(getattr(kernel_module, "ELL_ALIGN", 1))
    return -(-max(int(max_count), 1) // align) * align


def prune_layer(layer, rng, sparsity: float = 0.9) -> None:
    """New random weights for a Keras Conv2D, with a random `sparsity` share of the kernel zeroed."""
    w = layer.get_weights()
    w[0] = np.where(rng.random(w[0].shape) < sparsity, 0.0, rng.standard_normal(w[0].shape)).astype(np.float32)
    if len(w) > 1:
        w[1] = rng.standard_normal(w[1].shape).astype(np.float32)
    layer.set_weights(w)


def random_input(rng, shape) -> np.ndarray:
    """A float32 NHWC input with standard-normal entries."""
    return rng.standard_normal(tuple(int(d) for d in shape)).astype(np.float32)


def _tf_padding(padding):
    if isinstance(padding, str):
        return padding.upper()
    rows = [[int(v) for v in p] for p in padding]
    if len(rows) == 4:  # already TF's NHWC form
        return rows
    (t, b), (l, r) = rows
    return [[0, 0], [t, b], [l, r], [0, 0]]


def apply_activation(y: np.ndarray, activation):
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "relu6":
        return np.minimum(np.maximum(y, 0.0), 6.0)
    raise ValueError(f"unknown activation {activation!r}")


def reference_conv(x, w_dense, strides=1, padding="SAME", dilations=1, bias=None, activation=None):
    """The float64 reference: `tf.nn.conv2d` on float64 copies, then bias and the activation."""
    x64 = tf.constant(np.asarray(x, np.float64))
    w64 = tf.constant(np.asarray(w_dense, np.float64))
    y = tf.nn.conv2d(x64, w64, strides=strides, padding=_tf_padding(padding), dilations=dilations)
    y = y.numpy()
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return apply_activation(y, activation)


def rel_err(y, ref) -> float:
    """||y - ref|| / ||ref|| (absolute ||y - ref|| when the reference is all zero)."""
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    assert y.shape == ref.shape, f"shape {y.shape} != reference shape {ref.shape}"
    diff = float(np.linalg.norm((y - ref).ravel()))
    norm = float(np.linalg.norm(ref.ravel()))
    return diff / norm if norm > 0 else diff


def to_numpy(y) -> np.ndarray:
    """Any tensor the library returns (tf.Tensor, numpy, torch) as a numpy array."""
    if hasattr(y, "numpy") and callable(y.numpy):
        return np.asarray(y.numpy())
    return np.asarray(y)


def aligned_empty(shape, dtype=np.float32, offset_elems: int = 0, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts `offset_elems` elements after a 64-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = np.empty(n + offset_elems + alignment // dtype.itemsize, dtype)
    start = (-buf.ctypes.data % alignment) // dtype.itemsize + offset_elems
    out = buf[start : start + n].reshape(shape)
    assert (out.ctypes.data - offset_elems * dtype.itemsize) % alignment == 0
    return out


def run_poisoned(op, x: np.ndarray) -> np.ndarray:
    """`op.run` on a TVM copy of `x` into an output pre-filled with NaN; returns the output."""
    import tvm

    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), tvm.cpu())
    op.run(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), out)
    return out.numpy()
