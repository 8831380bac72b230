"""Algorithm "ell-gather": a channel-major relayout of the input, then an ELL gather per channel.

Stages (block names are what the schedule rules in `schedules/` look for):

- ``x_gather``: the NHWC input, zero-padded, laid out channel-major and flattened per image:
  ``xg[n, c*GH*GW + h*GW + w]``. Every nonzero of the kernel then reads its input through ONE
  packed int32 offset, and consecutive output columns read consecutive addresses (stride 1).
- ``conv``: for each output channel, a static-length (ELL) reduction over its stored nonzeros:
  ``conv[n, oh, ow, co] = sum_k values[co, k] * xg[n, offsets[co, k] + oh*sh*GW + ow*sw]``.
  Padding entries have value 0 and offset 0, so every output element is written, also for
  channels without a single nonzero.
- ``epilogue`` (only with bias or activation): ``act(conv + bias[co])``.

The compiled function's arguments, in order: x, values, offsets, [bias], out.
Format: the kernel's own ELL arrays (`SparseKernel`), with offsets packed for the input shape.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from .base import CONV, Algorithm, epilogue

X_GATHER = "x_gather"


def sparse_conv2d_te(wl: ConvWorkload) -> list[te.Tensor]:
    """Build the TE graph of `wl`; returns the argument tensors followed by the output."""
    n, h, w, cin = wl.input_shape
    cout, k = wl.out_channels, wl.ell_width
    (pt, _), (pl, _) = wl.pads
    gh, gw = wl.gather_hw
    sh, sw = wl.strides
    plane = gh * gw

    x = te.placeholder((n, h, w, cin), "float32", name="x")
    values = te.placeholder((cout, k), "float32", name="values")
    offsets = te.placeholder((cout, k), "int32", name="offsets")

    def gather(b, f):
        c, r = f // plane, f % plane
        row, col = r // gw - pt, r % gw - pl
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        return tirx.if_then_else(inside, x[b, row, col, c], tirx.const(0.0, "float32"))

    xg = te.compute((n, cin * plane), gather, name=X_GATHER)

    r = te.reduce_axis((0, k), name="k")
    conv = te.compute(
        (n, *wl.output_hw, cout),
        lambda b, oh, ow, co: te.sum(
            values[co, r] * xg[b, offsets[co, r] + oh * (sh * gw) + ow * sw], axis=r
        ),
        name=CONV,
    )
    return epilogue(wl, [x, values, offsets], conv)


def pack_offsets(wl: ConvWorkload, kh_idx, kw_idx, ci_idx):
    """The int32 offsets into ``x_gather`` of each stored nonzero (same shape as the indices)."""
    gh, gw = wl.gather_hw
    dh, dw = wl.dilations
    off = (
        ci_idx.astype(np.int64) * (gh * gw)
        + kh_idx.astype(np.int64) * (dh * gw)
        + kw_idx.astype(np.int64) * dw
    )
    return off.astype(np.int32)


class EllGather(Algorithm):
    """The first algorithm: any layer, any target; its format is the kernel's own ELL width."""

    name = "ell-gather"
    stage = X_GATHER

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        return True

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        return {"ell_width": kernel.ell_width, "chunk": 0}

    def te(self, wl: ConvWorkload) -> list[te.Tensor]:
        return sparse_conv2d_te(wl)

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        return [np.asarray(kernel.values), pack_offsets(wl, kernel.kh, kernel.kw, kernel.ci)]


ALGORITHM = EllGather()
