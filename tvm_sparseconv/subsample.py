"""Every stride-th row and column of an NHWC input (`x[:, ::sh, ::sw, :]`), compiled for a CPU.

A strided 1x1 convolution without padding reads only those pixels: the CPU ops run it as this copy
(one parallel pass over a 1/(sh*sw) share of the input) and then the stride-1 layer on the copy
(`ConvWorkload.subsampled`, `op.SparseConv2D`), whose kernels read contiguous vectors.
"""

from __future__ import annotations

import functools

import tvm
from tvm import s_tir, te


@functools.lru_cache(maxsize=64)
def subsample_function(input_shape: tuple[int, int, int, int], strides: tuple[int, int], target: str):
    """fn(x, y): y = x[:, ::sh, ::sw, :] for float32 NHWC `x` of `input_shape`, on LLVM `target`."""
    n, h, w, c = input_shape
    sh, sw = strides
    x = te.placeholder(input_shape, "float32", name="x")
    y = te.compute((n, -(-h // sh), -(-w // sw), c), lambda i, r, q, k: x[i, r * sh, q * sw, k], name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]).with_attr("global_symbol", "subsample"))
    i, r, q, k = sch.get_loops(sch.get_sblock("y"))
    sch.parallel(sch.fuse(i, r))  # output rows across the cores
    if c % 8 == 0:
        sch.vectorize(sch.split(k, factors=[None, 8])[1])  # channels are contiguous in both
    return tvm.compile(sch.mod, target=tvm.target.Target(target))["subsample"]
