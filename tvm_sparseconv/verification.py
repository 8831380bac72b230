"""First-use check of a compiled op against float64, for schedules whose record was tuned elsewhere.

A record of another CPU model of the same ISA family (`tuning_records.family_folders`) was checked
on that CPU when it was tuned, not here: the trace is replayed onto this workload and compiled for
this CPU, so it is run once on random data (a random kernel of the workload's shape and ELL
width, a NaN-poisoned output) and compared with a float64 reference before it is trusted.
`build.py` keeps the verdict beside the compiled module (`module_cache.read_verdict`), so each
compiled module is checked once per cache.
"""

from __future__ import annotations

import numpy as np
import tvm

from . import algorithms, reference
from .kernel import SparseKernel
from .workload import ConvWorkload

TOLERANCE = 1e-5  # relative error, as tuning's own check (`tuning.CHECK_TOLERANCE`)


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
    """Relative error of `function` (compiled for `wl`) against float64 on random data; inf when
    it leaves any output element unwritten (NaN) or fails."""
    rng = np.random.default_rng(seed)
    kernel = random_kernel(wl, rng)
    made = algorithms.workload_for(kernel, wl, wl.algorithm)
    if made != wl:  # would be a bug here, not in the record
        raise RuntimeError(f"random kernel gives {made.describe()}, wanted {wl.describe()}")
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    bias = rng.standard_normal(wl.out_channels, dtype=np.float32) if wl.has_bias else None
    arrays = [x, *algorithms.pack_weights(wl, kernel)] + ([bias] if bias is not None else [])
    args = [tvm.runtime.tensor(a, device) for a in arrays]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), device)
    function(*args, out)
    return reference.relative_error(out.numpy(), reference.conv2d_f64(x, kernel.to_dense(), wl, bias))
