"""First-use check of a compiled op against float64, for schedules whose record was tuned elsewhere.

A record of another CPU model of the same ISA family (`tuning_records.family_folders`) was checked
on that CPU when it was tuned, not here: the trace is replayed onto this workload and compiled for
this CPU, so it is run once on random data (a random kernel of the workload's shape and ELL
width, a NaN-poisoned output) and compared with a float64 reference before it is trusted.
Every output element must be written; values are compared on up to `CHECKED_ROWS` output rows
(the first and last two, where padding and loop tails are, and random ones between; all rows of
smaller outputs): numpy's float64 reference of the whole headline layer takes 10 s on one core
of the project's CPU (90 s with OpenBLAS's two threads competing with a tuning run), 16 rows 0.5 s.
`build.py` keeps the verdict beside the compiled module (`module_cache.read_verdict`), so each
compiled module is checked once per cache.
"""

from __future__ import annotations

import numpy as np
import tvm

from . import algorithms, reference
from .algorithms.base import TOLERANCES
from .kernel import SparseKernel
from .workload import ConvWorkload

TOLERANCE = TOLERANCES["fp32"]  # relative error: the CPU algorithms' (all fp32), as tuning checks them
CHECKED_ROWS = 16


def random_kernel(wl: ConvWorkload, rng: np.random.Generator) -> SparseKernel:
    """A random kernel of `wl`'s shape whose ELL width is `wl.ell_width`: one output channel has
    the most nonzeros the width allows, the others random counts (some may be empty)."""
    kh, kw, cin, cout = wl.kernel_shape
    per_channel = kh * kw * cin
    most = min(wl.ell_width, per_channel)
    counts = rng.integers(0, most + 1, cout)
    counts[rng.integers(cout)] = most
    # Rank of each position in a random order per channel: the `count` lowest ranks are nonzero.
    ranks = np.argsort(rng.random((cout, per_channel)), axis=1).argsort(axis=1)
    keep = ranks < counts[:, None]
    values = rng.standard_normal((cout, per_channel)).astype(np.float32)
    values[values == 0] = 1.0  # a drawn exact zero would drop a nonzero
    dense = np.where(keep, values, 0).reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)
    return SparseKernel.from_dense(np.ascontiguousarray(dense))


def check_function(function: tvm.runtime.Function, wl: ConvWorkload, device: tvm.runtime.Device,
                   seed: int = 0) -> float:
    """Relative error of `function` (compiled for `wl`) against float64 on random data (on the
    `checked_rows`); inf when it leaves any output element unwritten (NaN)."""
    rng = np.random.default_rng(seed)
    kernel = random_kernel(wl, rng)
    made = algorithms.workload_for(kernel, wl, wl.algorithm)
    if made != wl:  # would be a bug here, not in the record
        raise RuntimeError(f"random kernel gives {made.describe()}, wanted {wl.describe()}")
    return _error(function, kernel, wl, device, rng, algorithms.pack_weights(wl, kernel))


def check_generated(function: tvm.runtime.Function, kernel, wl: ConvWorkload, device: tvm.runtime.Device,
                    seed: int = 0) -> float:
    """Relative error of a generated algorithm's `function` (its code holds `kernel`'s values; its
    arguments are x, [bias], out) against float64 on a random input; inf as `check_function`."""
    return _error(function, kernel, wl, device, np.random.default_rng(seed), [])


def _error(function, kernel, wl: ConvWorkload, device, rng: np.random.Generator, weights: list) -> float:
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    bias = rng.standard_normal(wl.out_channels, dtype=np.float32) if wl.has_bias else None
    arrays = [x, *weights] + ([bias] if bias is not None else [])
    args = [tvm.runtime.tensor(a, device) for a in arrays]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), device)
    function(*args, out)
    y = out.numpy()
    if not np.isfinite(y).all():
        return float("inf")  # an element left unwritten (NaN), anywhere
    rows = checked_rows(wl.output_shape[1], rng)
    return reference.relative_error(y[:, rows], reference.conv2d_f64(x, kernel.to_dense(), wl, bias, rows))


def checked_rows(height: int, rng: np.random.Generator, count: int = CHECKED_ROWS) -> np.ndarray:
    """Up to `count` output rows: the first and last two and random ones between, sorted."""
    if height <= max(count, 4):
        return np.arange(height)
    ends = np.array([0, 1, height - 2, height - 1])
    middle = rng.choice(np.arange(2, height - 2), count - len(ends), replace=False)
    return np.sort(np.concatenate([ends, middle]))
