"""Algorithm "nhwc-direct": the NHWC input read where it is, in input-channel chunks; no relayout pass.

Stages (block names are what the schedule rules in `schedules/` look for):

- ``x_pad``: the NHWC input with TensorFlow's padding as zeros and its channels padded to whole
  chunks, ``x_pad[n, r, c, ch]``. It is a definition, not a pass: the CUDA rule inlines it into the
  shared-memory copy of each tile (padding folded into that copy's bounds checks), so the input is
  read once, coalesced along channels, and nothing is written back. For a strided 1x1 layer it is
  the strided view, indexed by output pixel (``x_pad[n, oh, ow, ch] = x[n, oh*sh - pt, ow*sw - pl, ch]``):
  a tile then stages exactly the pixels it reads, not their strided bounding box (4x as many at
  stride 2, which also cut the chunk 4x).
- ``conv``: input channels in chunks of ``chunk``; for each output channel and chunk, a
  static-length (ELL) list of that chunk's nonzeros, each one value and one packed tap
  ``ci_in_chunk + chunk * (kw + KW * kh)``:
  ``conv[n, oh, ow, co] = sum_{c, k} values[co, c, k] * x_pad[n, oh*sh + kh*dh, ow*sw + kw*dw, c*chunk + ci]``.
  A tile's input (its pixels' halo x one chunk of channels) fits in shared memory, and threads
  across output pixels then gather from there: flattened (n, oh, ow) tiles fill warps on small
  maps and large batches alike.
- ``epilogue`` (only with bias or activation): ``act(conv + bias[co])``.

The compiled function's arguments, in order: x, values, taps, [bias], out.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import ELL_ALIGN, SparseKernel
from ..workload import ConvWorkload
from .base import CONV, Algorithm, epilogue

X_PAD = "x_pad"
#: function attribute with what the schedule rule needs to size tiles (strides, extent, chunk)
TILE_ATTR = "sparseconv_tile"
#: shared memory a minimal tile's input may take when choosing the chunk (half the 48 KB default)
CHUNK_BUDGET_BYTES = 24 * 1024
MIN_TILE = (4, 8)  # output rows x columns the chunk must leave room for
MAX_CHUNK = 256


def strided_view(wl: ConvWorkload) -> bool:
    """Whether `x_pad` is the strided view of the input on the output grid (strided 1x1 layers).

    Stride-1 1x1 layers keep the plain padded definition, whose tuning records are committed.
    """
    return tuple(wl.kernel_shape[:2]) == (1, 1) and tuple(wl.strides) != (1, 1)


def staged_geometry(wl: ConvWorkload) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel extent, strides) of the tile that `x_pad` stages: unit ones for the strided view."""
    return ((1, 1), (1, 1)) if strided_view(wl) else (wl.kernel_extent, wl.strides)


def chunk_size(wl: ConvWorkload) -> int:
    """Input channels per chunk: the largest power of two whose minimal tile fits the budget."""
    (eh, ew), (sh, sw) = staged_geometry(wl)
    halo = ((MIN_TILE[0] - 1) * sh + eh) * ((MIN_TILE[1] - 1) * sw + ew)
    cap = 1 << max(wl.input_shape[3] - 1, 0).bit_length()  # next power of two >= Cin
    chunk = 1
    while chunk * 2 <= min(cap, MAX_CHUNK) and halo * (chunk * 2 + 1) * 4 <= CHUNK_BUDGET_BYTES:
        chunk *= 2
    return chunk


def _chunked(kernel: SparseKernel, chunk: int):
    """Per (output channel, chunk): rank of each stored nonzero, and the chunk of each."""
    kh_, kw_, cin, cout = kernel.shape
    real = kernel.stored()
    which = np.where(real, kernel.ci // chunk, -1)
    n_chunks = -(-cin // chunk)
    counts = np.zeros((cout, n_chunks), np.int64)
    for c in range(n_chunks):
        counts[:, c] = (which == c).sum(axis=1)
    return real, which, counts


def pack_chunked(wl: ConvWorkload, kernel: SparseKernel) -> tuple[np.ndarray, np.ndarray]:
    """(values, taps), each (Cout, chunks, width): padding has value 0 and tap 0."""
    kh_, kw_, cin, cout = kernel.shape
    chunk, width = wl.chunk, wl.ell_width
    real, which, counts = _chunked(kernel, chunk)
    n_chunks = counts.shape[1]
    values = np.zeros((cout, n_chunks, width), np.float32)
    taps = np.zeros((cout, n_chunks, width), np.int32)
    co, j = np.nonzero(real)
    c = which[co, j]
    # Rank within (co, chunk): nonzeros are sorted by ci within a channel, so chunks are runs.
    first = np.zeros_like(counts)
    first[:, 1:] = np.cumsum(counts, axis=1)[:, :-1]
    rank = j - first[co, c]
    values[co, c, rank] = kernel.values[co, j]
    taps[co, c, rank] = (kernel.ci[co, j] - c * chunk) + chunk * (kernel.kw[co, j] + kw_ * kernel.kh[co, j])
    return values, taps


def nhwc_direct_te(wl: ConvWorkload) -> list[te.Tensor]:
    """Build the TE graph of `wl`; returns the argument tensors followed by the output."""
    n, h, w, cin = wl.input_shape
    kh_, kw_, _, cout = wl.kernel_shape
    chunk, width = wl.chunk, wl.ell_width
    n_chunks = -(-cin // chunk)
    (pt, _), (pl, _) = wl.pads
    gh, gw = wl.gather_hw
    sh, sw = wl.strides
    dh, dw = wl.dilations

    x = te.placeholder((n, h, w, cin), "float32", name="x")
    values = te.placeholder((cout, n_chunks, width), "float32", name="values")
    taps = te.placeholder((cout, n_chunks, width), "int32", name="taps")

    def pad(b, r, c, ch):
        inside = tirx.all(r >= pt, r < h + pt, c >= pl, c < w + pl, ch < cin)
        return tirx.if_then_else(inside, x[b, r - pt, c - pl, ch], tirx.const(0.0, "float32"))

    if strided_view(wl):
        def view(b, oh, ow, ch):
            return pad(b, oh * sh, ow * sw, ch)

        xp = te.compute((n, *wl.output_hw, n_chunks * chunk), view, name=X_PAD)
        sh = sw = 1  # conv reads the view at its own output pixel
    else:
        xp = te.compute((n, gh, gw, n_chunks * chunk), pad, name=X_PAD)

    rc = te.reduce_axis((0, n_chunks), name="c")
    rk = te.reduce_axis((0, width), name="k")

    def tap_read(b, oh, ow, co):
        t = taps[co, rc, rk]
        ci = tirx.floormod(t, chunk)
        # Clamped so that TVM's region analysis can bound a tile's halo (packed taps are in range).
        kw = tirx.floormod(tirx.floordiv(t, chunk), kw_) if kw_ > 1 else 0
        kh = tirx.max(tirx.min(tirx.floordiv(t, chunk * kw_), kh_ - 1), 0) if kh_ > 1 else 0
        return xp[b, oh * sh + kh * dh, ow * sw + kw * dw, rc * chunk + ci]

    conv = te.compute(
        (n, *wl.output_hw, cout),
        lambda b, oh, ow, co: te.sum(values[co, rc, rk] * tap_read(b, oh, ow, co), axis=[rc, rk]),
        name=CONV,
    )
    return epilogue(wl, [x, values, taps], conv)


class NhwcDirect(Algorithm):
    """Tiles of flattened output pixels, their input chunk staged from NHWC in shared memory (CUDA)."""

    name = "nhwc-direct"
    stage = X_PAD

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        return target_kind == "cuda"

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        chunk = chunk_size(wl)
        _, _, counts = _chunked(kernel, chunk)
        width = -(-max(int(counts.max()), 1) // ELL_ALIGN) * ELL_ALIGN
        return {"ell_width": width, "chunk": chunk}

    def te(self, wl: ConvWorkload) -> list[te.Tensor]:
        return nhwc_direct_te(wl)

    def func_attrs(self, wl: ConvWorkload) -> dict:
        (eh, ew), (sh, sw) = staged_geometry(wl)
        return {TILE_ATTR: {"sh": sh, "sw": sw, "eh": eh, "ew": ew, "chunk": wl.chunk}}

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        return list(pack_chunked(wl, kernel))


ALGORITHM = NhwcDirect()
