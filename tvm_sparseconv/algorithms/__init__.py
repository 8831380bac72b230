"""The algorithms: one module each, with its TE definition and the weight format it reads.

- `ell_gather`: channel-major relayout of the input, then one ELL gather per output channel
  (the first algorithm; every target; the default where no record says otherwise).
- `nhwc_direct`: the NHWC input read in place, a chunk of input channels of each tile of flattened
  output pixels staged in shared memory (CUDA).
- `union_tf32`: TF32 tensor cores (mma.sync) on each group of 8 output channels' union of taps
  (CUDA; `precision="tf32"` only).
- `union_tf32_async`: union-tf32 with its staging copy as `cp.async` into a double-buffered tile,
  overlapped with the mma (the input rounded at the fragment; CUDA; `precision="tf32"` only).
- `register_reuse`: the kernel's values compiled into straight-line code, one FMA per nonzero
  (CUDA, any kernel size within a code-size budget; generated per kernel, not MetaSchedule-scheduled; chosen where its tile record is fastest).
- `cpu_register_reuse`: the same idea for LLVM CPU targets, vectors along output pixels (generated,
  chosen where its tile record on this CPU is fastest).
- `csr_split_k`: 1x1 layers (CUDA) as compressed sparse rows, each block one chunk of input
  channels, the chunks' sums added in the output (built per layer from a tile like the generated
  ones, its weights as data; chosen where its tile record is fastest).
- `cpu_csr`: stride-1 layers of any kernel size (LLVM CPUs; strided ones on their stride phases)
  as compressed sparse rows, vectors of flattened output positions in a zero-bordered
  channel-major copy, no ELL padding (built per layer from a tile, weights as data; chosen where
  its tile record on this CPU is fastest).

A new algorithm is a module here with an `Algorithm` subclass instance named `ALGORITHM`, listed
in `ALGORITHMS`, and its schedule rules in `schedules/` (each names the algorithm it schedules;
a generated algorithm's code emitter lives there too).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from . import (cpu_csr, cpu_register_reuse, csr_split_k, ell_gather, nhwc_direct, register_reuse, union_tf32,
               union_tf32_async)
from .base import CONV, EPILOGUE, Algorithm

__all__ = ["ALGORITHMS", "CONV", "DEFAULT", "EPILOGUE", "PRECISIONS", "Algorithm", "allowed", "by_name",
           "check_precision", "pack_weights", "prim_func",
           "stage_names", "te_graph", "untuned_default", "workload_for", "workloads_for",
           "generated_workloads_for"]

FUNC_NAME = "sparse_conv2d"
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (ell_gather.ALGORITHM, nhwc_direct.ALGORITHM,
                                                             union_tf32.ALGORITHM, union_tf32_async.ALGORITHM,
                                                             register_reuse.ALGORITHM,
                                                             cpu_register_reuse.ALGORITHM, csr_split_k.ALGORITHM,
                                                             cpu_csr.ALGORITHM)}
#: the algorithm that computes every layer on every target (tune.py's default)
DEFAULT = ell_gather.ALGORITHM.name


def untuned_default(wl: ConvWorkload, target_kind: str) -> str:
    """The algorithm whose untuned template runs a layer that no tuning record covers.

    Measured side by side (benchmarks/results/nvidia-h200-resnet50-1x1-algorithms-untuned.json and
    nvidia-h200-resnet50-algorithms.json): on CUDA, nhwc-direct's template beat ell-gather's on all
    16 ResNet-50 1x1 layers (batch 1 and 32) and lost on 12 of 14 3x3 layers (by up to 6x).
    On CPUs, cpu-csr (a generated algorithm: its default tile, `build.build_layer`) for every
    stride-1 layer (strided ones run on their stride phases): on the headline and ResNet-50's 26
    batch-1 shapes its default tile ran within 1.10x of its best tile, 1.16-2.75x faster than the
    layer's tuned MetaSchedule record (21 shapes) and 1.84-3.71x than the untuned template (6)
    (znver3, benchmarks/experiments/cpu-znver3-tune-cpu-csr-v3-chunks.json).
    """
    if target_kind == "cuda" and tuple(wl.kernel_shape[:2]) == (1, 1):
        return nhwc_direct.ALGORITHM.name
    if cpu_csr.ALGORITHM.applies(wl, target_kind):
        return cpu_csr.ALGORITHM.name
    return DEFAULT


def by_name(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def stage_names() -> tuple[str, ...]:
    """Names of the input-staging blocks of every algorithm (schedule rules look for them)."""
    return tuple(a.stage for a in ALGORITHMS.values() if a.stage)


def workload_for(kernel: SparseKernel, wl: ConvWorkload, algorithm: str) -> ConvWorkload:
    """`wl` (any algorithm's workload of the layer) as `algorithm` computes `kernel`."""
    return wl.with_format(algorithm, **by_name(algorithm).format_of(kernel, wl))


PRECISIONS = ("fp32", "tf32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def allowed(algorithm: Algorithm, precision: str) -> bool:
    """Whether `algorithm` may serve a layer compiled at `precision`: fp32 ones always, TF32 ones
    only when TF32 was asked for (it is never chosen behind a user's back)."""
    return algorithm.precision == "fp32" or algorithm.precision == check_precision(precision)


def workloads_for(kernel: SparseKernel, wl: ConvWorkload, target_kind: str,
                  precision: str = "fp32") -> list[ConvWorkload]:
    """The layer's workload under every scheduled algorithm (MetaSchedule records) that can compute
    it on `target_kind` at `precision` (`generated_workloads_for`: the generated ones)."""
    return [workload_for(kernel, wl, a.name) for a in ALGORITHMS.values()
            if not a.generated and a.applies(wl, target_kind) and allowed(a, precision)]


def generated_workloads_for(kernel: SparseKernel, wl: ConvWorkload, target_kind: str,
                            precision: str = "fp32") -> list[ConvWorkload]:
    """The layer's workload under every generated algorithm (the kernel's values in the code; tile
    records) that can compute it on `target_kind` at `precision`."""
    return [workload_for(kernel, wl, a.name) for a in ALGORITHMS.values()
            if a.generated and a.applies(wl, target_kind) and allowed(a, precision)]


def prim_func(wl: ConvWorkload) -> tirx.PrimFunc:
    """The workload as an unscheduled TIR PrimFunc (the unit MetaSchedule tunes and keys on)."""
    algorithm = by_name(wl.algorithm)
    func = te.create_prim_func(algorithm.te(wl)).with_attr("global_symbol", FUNC_NAME)
    for key, value in algorithm.func_attrs(wl).items():
        func = func.with_attr(key, value)
    return func


def te_graph(wl: ConvWorkload) -> list[te.Tensor]:
    return by_name(wl.algorithm).te(wl)


def pack_weights(wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
    """The weight arrays of `wl`'s algorithm for `kernel` (the arguments after x, bias excluded)."""
    return by_name(wl.algorithm).pack(wl, kernel)
