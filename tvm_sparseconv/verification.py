"""First-use check of a compiled op against float64, for schedules whose record was tuned elsewhere.

A record of another device of the same family (`tuning_records.family_folders`: a CPU of the ISA
family, a GPU of the CUDA architecture) was checked on that device when it was tuned, not here: the
trace (or tile) is replayed onto this workload and compiled for this device, so it is run once on
random data (a random kernel of the workload's shape and ELL width, a NaN-poisoned output) and
compared with a float64 reference before it is trusted.
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

TOLERANCE = TOLERANCES["fp32"]  # relative error of the fp32 algorithms (each algorithm has its `tolerance`)
CHECKED_ROWS = 16


def random_kernel(wl: ConvWorkload, rng: np.random.Generator) -> SparseKernel:
    """A random kernel of `wl`'s shape whose format under `wl`'s algorithm is `wl`'s (its ELL width,
    or the widest (channel, chunk) or (group, chunk) union of the chunked algorithms).

    One output channel has as many nonzeros as the width allows, the others random counts (some
    may be empty). The first draw spreads them over all taps; where that misses the format (a
    chunked algorithm's width is per chunk of input channels), the full channel's nonzeros are
    packed into the first chunk and the others thinned, down to none."""
    for packed, share in ((False, 1.0), (True, 1.0), (True, 0.125), (True, 0.0)):
        kernel = _drawn_kernel(wl, rng, packed, share)
        if algorithms.workload_for(kernel, wl, wl.algorithm) == wl:
            return kernel
    raise RuntimeError(f"no random kernel of {wl.describe()} has its format "
                       f"(last drawn: {algorithms.workload_for(kernel, wl, wl.algorithm).describe()})")


def _drawn_kernel(wl: ConvWorkload, rng: np.random.Generator, packed: bool, share: float) -> SparseKernel:
    """One output channel with min(width, taps) nonzeros (`packed`: on its first taps, i.e. the
    first input channels), the others with random counts up to `share` of that."""
    kh, kw, cin, cout = wl.kernel_shape
    per_channel = kh * kw * cin
    most = min(wl.ell_width, per_channel)
    counts = rng.integers(0, int(most * share) + 1, cout)
    full = rng.integers(cout)
    counts[full] = most
    # Rank of each position in a random order per channel: the `count` lowest ranks are nonzero.
    ranks = np.argsort(rng.random((cout, per_channel)), axis=1).argsort(axis=1)
    if packed:
        ranks[full] = np.arange(per_channel)  # taps are ordered (ci, kh, kw): the first ones
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
    """Relative error of a generated algorithm's `function` (built for `kernel`; its arguments are
    x, its `pack` arrays, [bias], out) against float64 on a random input; inf as `check_function`."""
    return _error(function, kernel, wl, device, np.random.default_rng(seed), algorithms.pack_weights(wl, kernel))


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
