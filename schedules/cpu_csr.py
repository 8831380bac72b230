"""The kernel of algorithm "cpu-csr" (LLVM CPUs, 1x1 stride-1 layers): compressed rows, vectors along pixels.

ell-gather walks every output channel to the kernel's ELL width (the longest channel), so on the
benchmark's pruned ResNet-50 it does 1.15-1.90x the useful multiply-adds at 90% zeros and up to
3.75x at 95% (`benchmarks/experiments/ell_padding.py`): conv4 1x1 expand 1.72x. Here each channel
walks its own nonzeros (compressed rows), and the vector is a block of flattened output pixels:

- the NHWC input is copied channel-major (``xc[b, c, p]``, pixels padded with zeros to whole
  blocks) in blocks of 16 channels x 16 pixels, channels innermost (contiguous reads, as
  `schedules/cpu.py`'s relayout);
- parallel over (image, block of ``pixels`` output pixels, block of ``channels`` output channels):
  per channel, a vector of ``pixels`` sums in registers takes one broadcast weight and one
  contiguous load of its input channel's pixels per nonzero; the block's sums go through a small
  channel-major scratch and leave pixel by pixel, channels contiguous (NHWC), with bias and
  activation.

Weights are data (`pack`): ``ptr`` (Cout + 1 row starts), ``cols`` (input channels), ``vals``.
"""

# no `from __future__ import annotations`: TVMScript reads the parameters' annotations as objects

from dataclasses import asdict, dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from tvm_sparseconv.algorithms.base import activate

from .common import kernel_function

#: bump when the emitted kernel changes for the same inputs (part of the compiled module's cache key)
EMITTER_VERSION = 1
#: channels x pixels per block of the channel-major copy
COPY_BLOCK = 16


@dataclass(frozen=True)
class Tile:
    """One point of the design space."""

    pixels: int = 32  # flattened output pixels per vector of sums (a multiple of 8)
    channels: int = 16  # output channels per parallel task

    @property
    def name(self) -> str:
        return f"p{self.pixels}c{self.channels}"

    def as_dict(self) -> dict:
        return asdict(self)


#: the named tiles (what records name)
TILES: dict[str, Tile] = {t.name: t for t in (Tile(p, c) for p in (8, 16, 32, 64, 128) for c in (8, 16, 32, 64, 128))}
DEFAULT_TILE = Tile().name


def pack(kernel) -> list[np.ndarray]:
    """(ptr, cols, vals) of a 1x1 `SparseKernel`: its rows without the ELL padding (at least one
    entry each of cols and vals, so that a kernel of zeros still compiles)."""
    starts, cols, vals = kernel.compressed_rows()
    if cols.size == 0:
        cols, vals = np.zeros(1, np.int32), np.zeros(1, np.float32)
    return [starts.astype(np.int32), cols, vals]


def emit(input_shape, cout: int, nnz: int, tile: Tile, bias: bool = False,
         activation: "str | None" = None) -> tirx.PrimFunc:
    """The PrimFunc ``f(x, ptr, cols, vals, [bias], out)`` of a 1x1 stride-1 layer (NHWC)."""
    n, h, w, cin = input_shape
    npx = h * w
    pb_len, cb_len = tile.pixels, tile.channels
    n_pb = -(-npx // pb_len)
    n_cb = -(-cout // cb_len)
    ppad = n_pb * pb_len
    nnz = max(nnz, 1)
    n_cblk = -(-cin // COPY_BLOCK)
    n_pblk = -(-ppad // COPY_BLOCK)

    def finish(y, co, bias_buf):
        if bias:
            y = y + bias_buf[co]
        return activate(y, activation)

    @T.prim_func(private=True)
    def body(x_nhwc: T.Buffer((n, h, w, cin), "float32"), ptr: T.Buffer((cout + 1,), "int32"),
             cols: T.Buffer((nnz,), "int32"), vals: T.Buffer((nnz,), "float32"),
             bias_buf: T.Buffer((cout,), "float32"), out_nhwc: T.Buffer((n, h, w, cout), "float32")):
        x_in = T.decl_buffer((n * npx * cin,), "float32", data=x_nhwc.data)
        out = T.decl_buffer((n * npx * cout,), "float32", data=out_nhwc.data)
        xc = T.alloc_buffer((n * cin * ppad,), "float32")
        # the channel-major copy, in blocks of channels x pixels, channels innermost
        for blk in T.parallel(n * n_cblk * n_pblk):
            for pi in range(COPY_BLOCK):
                for ci in range(COPY_BLOCK):
                    b = T.meta_var(blk // (n_cblk * n_pblk))
                    c = T.meta_var(blk // n_pblk % n_cblk * COPY_BLOCK + ci)
                    p = T.meta_var(blk % n_pblk * COPY_BLOCK + pi)
                    if c < cin and p < ppad:
                        xc[(b * cin + c) * ppad + p] = T.if_then_else(
                            p < npx, x_in[(b * npx + T.min(p, npx - 1)) * cin + c], T.float32(0))
        for task in T.parallel(n * n_pb * n_cb):
            sums = T.alloc_buffer((cb_len * pb_len,), "float32", scope="local")
            b = T.meta_var(task // (n_pb * n_cb))
            pb = T.meta_var(task // n_cb % n_pb)
            cb = T.meta_var(task % n_cb)
            for cc in range(cb_len):
                acc = T.alloc_buffer((pb_len,), "float32", scope="local")
                for pp in T.vectorized(pb_len):
                    acc[pp] = T.float32(0)
                if cb * cb_len + cc < cout:
                    for j in T.serial(ptr[cb * cb_len + cc + 1] - ptr[cb * cb_len + cc]):
                        for pp in T.vectorized(pb_len):
                            acc[pp] = acc[pp] + vals[ptr[cb * cb_len + cc] + j] * xc[
                                (b * cin + cols[ptr[cb * cb_len + cc] + j]) * ppad + pb * pb_len + pp]
                for pp in T.vectorized(pb_len):
                    sums[cc * pb_len + pp] = acc[pp]
            # out leaves pixel by pixel, the block's channels contiguous (NHWC)
            for pp in range(pb_len):
                for cc in range(cb_len):
                    if pb * pb_len + pp < npx and cb * cb_len + cc < cout:
                        out[(b * npx + pb * pb_len + pp) * cout + cb * cb_len + cc] = finish(
                            sums[cc * pb_len + pp], cb * cb_len + cc, bias_buf)

    return kernel_function(body, bias)  # (x, ptr, cols, vals, [bias], out)
