"""Algorithm "union-tf32": TF32 tensor cores on a dense GEMM per group of output channels (opt-in precision).

Output channels go in groups of ``GROUP`` = 8 (the n of ``mma.sync.m16n8k8.tf32``). Each group's
taps (kh, kw, ci) are the union of its channels' nonzeros, padded to a common multiple of 8 (the
mma's k), so a group is a dense GEMM: (output pixels x union taps) @ (union taps x 8 channels),
with zeros where a channel has no weight at a tap. On unstructured 90% pruning 8 channels share
about 58% of the dense taps (`benchmarks/experiments/tf32_union_bound.md`), so the tensor cores
do about 5.8x the useful multiply-adds, at 8x the fp32 rate of the CUDA cores and one gathered
input value per 8 multiply-adds.

Stages (block names are what the schedule rules in `schedules/` look for):

- ``a_tf32``: the gathered input, ``a[p, g, k] = tf32(x[n, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl, ci])``
  over flattened output pixels p = (n, oh, ow), group g and union position k, where
  ``(ci, kw, kh)`` is unpacked from ``taps[g, k] = ci + Cin*(kw + KW*kh)``. Zero outside the input
  (TensorFlow's padding). Rounded to TF32 (nearest, ties away from zero, as ``cvt.rna.tf32.f32``):
  the tensor cores would otherwise truncate. The CUDA rule computes it into the mma's A fragments
  (registers), never into memory.
- ``conv``: ``conv[p, co] = sum_k a[p, co // 8, k] * weights[co // 8, k, co % 8]`` (flattened
  pixels: a warp's 16-pixel mma tile is any 16 consecutive pixels, whatever the map's width).
- ``epilogue``: the NHWC output, ``act(conv[(n*OH + oh)*OW + ow, co] + bias[co])`` (always present:
  it is also the reshape to NHWC).

Weights are rounded to TF32 when packed. The compiled function's arguments, in order:
x, weights (groups, K, 8), taps (groups, K), [bias], out.
Format sizes in the workload: ``ell_width`` = K (union taps per group), ``chunk`` = ``GROUP``.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import SparseKernel
from ..tir_build import WARP_FRAGMENTS_ATTR
from ..workload import ConvWorkload
from .base import CONV, EPILOGUE, Algorithm

A_TF32 = "a_tf32"
GROUP = 8  # output channels per group: the n of mma m16n8k8
K_STEP = 8  # union taps per mma: its k
M_TILE = 16  # output pixels per mma: its m


def round_tf32(bits: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 mantissa bits; nearest, ties away from zero)."""
    u = np.asarray(bits, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _round_tf32_expr(v: tirx.PrimExpr) -> tirx.PrimExpr:
    u = tirx.reinterpret("uint32", v)
    return tirx.reinterpret("float32", (u + tirx.const(0x1000, "uint32")) & tirx.const(0xFFFFE000, "uint32"))


def group_unions(kernel: SparseKernel) -> list[np.ndarray]:
    """Per group of `GROUP` output channels: its sorted packed taps ``ci + Cin*(kw + KW*kh)``."""
    kh_, kw_, cin, cout = kernel.shape
    real = np.arange(kernel.ell_width)[None, :] < kernel.counts[:, None]
    packed = kernel.ci.astype(np.int64) + cin * (kernel.kw.astype(np.int64) + kw_ * kernel.kh.astype(np.int64))
    unions = []
    for g in range(cout // GROUP):
        rows = slice(g * GROUP, (g + 1) * GROUP)
        unions.append(np.unique(packed[rows][real[rows]]))
    return unions


def pack_union(wl: ConvWorkload, kernel: SparseKernel) -> tuple[np.ndarray, np.ndarray]:
    """(weights (groups, K, GROUP) rounded to TF32, taps (groups, K)); padding: tap 0, weight 0."""
    kh_, kw_, cin, cout = kernel.shape
    k_pad = wl.ell_width
    unions = group_unions(kernel)
    dense = kernel.to_dense()  # HWIO
    weights = np.zeros((len(unions), k_pad, GROUP), np.float32)
    taps = np.zeros((len(unions), k_pad), np.int32)
    for g, u in enumerate(unions):
        ci, rest = u % cin, u // cin
        kw, kh = rest % kw_, rest // kw_
        taps[g, : len(u)] = u
        weights[g, : len(u)] = dense[kh, kw, ci, g * GROUP:(g + 1) * GROUP]
    return round_tf32(weights), taps


def union_tf32_te(wl: ConvWorkload) -> list[te.Tensor]:
    """Build the TE graph of `wl`; returns the argument tensors followed by the output."""
    n, h, w, cin = wl.input_shape
    kh_, kw_, _, cout = wl.kernel_shape
    k_pad, groups = wl.ell_width, cout // GROUP
    oh_, ow_ = wl.output_hw
    (pt, _), (pl, _) = wl.pads
    sh, sw = wl.strides
    dh, dw = wl.dilations
    pixels = n * oh_ * ow_

    x = te.placeholder((n, h, w, cin), "float32", name="x")
    weights = te.placeholder((groups, k_pad, GROUP), "float32", name="weights")
    taps = te.placeholder((groups, k_pad), "int32", name="taps")

    def gather(p, g, k):
        t = taps[g, k]
        ci = tirx.floormod(t, cin)
        kw = tirx.floormod(tirx.floordiv(t, cin), kw_) if kw_ > 1 else 0
        kh = tirx.max(tirx.min(tirx.floordiv(t, cin * kw_), kh_ - 1), 0) if kh_ > 1 else 0
        b, rest = tirx.floordiv(p, oh_ * ow_), tirx.floormod(p, oh_ * ow_)
        row = tirx.floordiv(rest, ow_) * sh + kh * dh - pt
        col = tirx.floormod(rest, ow_) * sw + kw * dw - pl
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        v = tirx.if_then_else(inside, x[b, row, col, ci], tirx.const(0.0, "float32"))
        return _round_tf32_expr(v)

    a = te.compute((pixels, groups, k_pad), gather, name=A_TF32)
    rk = te.reduce_axis((0, k_pad), name="k")
    conv = te.compute(
        (pixels, cout),
        lambda p, co: te.sum(a[p, co // GROUP, rk] * weights[co // GROUP, rk, co % GROUP], axis=rk),
        name=CONV,
    )

    args = [x, weights, taps]
    bias = te.placeholder((cout,), "float32", name="bias") if wl.has_bias else None
    if bias is not None:
        args.append(bias)

    def finish(b, oh, ow, co):
        y = conv[(b * oh_ + oh) * ow_ + ow, co]
        if bias is not None:
            y = y + bias[co]
        if wl.activation == "relu":
            y = tirx.max(y, tirx.const(0.0, "float32"))
        elif wl.activation == "relu6":
            y = tirx.min(tirx.max(y, tirx.const(0.0, "float32")), tirx.const(6.0, "float32"))
        return y

    out = te.compute((n, oh_, ow_, cout), finish, name=EPILOGUE)
    return args + [out]


class UnionTF32(Algorithm):
    """Dense TF32 mma over each 8-channel group's union of taps (CUDA, sm_80 and newer; opt-in)."""

    name = "union-tf32"
    stage = A_TF32
    precision = "tf32"

    def applies(self, wl: ConvWorkload | None, target_kind: str) -> bool:
        """CUDA, Cout a multiple of 8 and N*OH*OW of 16 (whole mma tiles); `wl=None`: the target alone."""
        if target_kind != "cuda" or wl is None:
            return target_kind == "cuda"
        n, oh, ow, cout = wl.output_shape
        return cout % GROUP == 0 and (n * oh * ow) % M_TILE == 0

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        longest = max((len(u) for u in group_unions(kernel)), default=0)
        return {"ell_width": max(-(-longest // K_STEP) * K_STEP, K_STEP), "chunk": GROUP}

    def te(self, wl: ConvWorkload) -> list[te.Tensor]:
        return union_tf32_te(wl)

    def func_attrs(self, wl: ConvWorkload) -> dict:
        return {WARP_FRAGMENTS_ATTR: 3}  # A, B and C fragments (tir_build lowers each)

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        return list(pack_union(wl, kernel))


ALGORITHM = UnionTF32()
