"""The kernel of algorithm "cpu-csr" (LLVM CPUs, stride-1 layers): compressed rows, vectors along pixels.

ell-gather walks every output channel to the kernel's ELL width (the longest channel), so on the
benchmark's pruned ResNet-50 it does 1.15-1.90x the useful multiply-adds at 90% zeros and up to
3.75x at 95% (`benchmarks/experiments/ell_padding.py`): conv4 1x1 expand 1.72x. Here each channel
walks its own nonzeros (compressed rows), and the vector is a block of flattened output positions:

- the NHWC input is copied channel-major with its zero border, each channel a plane of padded
  rows one after the other (``xc[b, c, hp * Wp + wp]``), in blocks of 16 channels x 16 positions,
  channels innermost (contiguous reads, as `schedules/cpu.py`'s relayout);
- output pixel (oh, ow) is computed at position ``oh * Wp + ow``: for a stride-1 layer it reads
  ``xc[b, ci, position + kh * dh * Wp + kw * dw]``, so every nonzero (ci, kh, kw) is one constant
  offset (`pack`) and a vector of consecutive positions one contiguous load, for any kernel size,
  padding and dilation. The positions in the border columns (ow >= OW: Wp - OW of every Wp, none
  for an unpadded 1x1 layer) are computed and dropped;
- parallel over (image, block of ``pixels`` positions, block of ``channels`` output channels):
  per channel, a vector of ``pixels`` sums in registers takes one broadcast weight and one
  contiguous load per nonzero; the block's sums go through a small channel-major scratch and leave
  pixel by pixel, channels contiguous (NHWC), with bias and activation.

Tiles ending in ``k<chunk>`` walk the input channels in chunks: per chunk, every channel of the
block takes its nonzeros of those input channels, so that the chunk's rows of the copy stay in L1
(a 3x3 layer of 256 input channels touches 768 rows of the copy per block of positions), and the
sums wait in the block's scratch between chunks.

Weights are data (`pack`): ``ptr`` (per output channel, where its nonzeros of every `PTR_STEP`-th
input channel onwards start), ``offsets`` (input offsets), ``vals``.
"""

# no `from __future__ import annotations`: TVMScript reads the parameters' annotations as objects

from dataclasses import asdict, dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from tvm_sparseconv.algorithms.base import activate

from .common import kernel_function

#: bump when the emitted kernel changes for the same inputs (part of the compiled module's cache key)
EMITTER_VERSION = 3
#: channels x pixels per block of the channel-major copy
COPY_BLOCK = 16
#: input channels per entry of the row-pointer table (a tile's chunk is a multiple of it)
PTR_STEP = 8


@dataclass(frozen=True)
class Tile:
    """One point of the design space."""

    pixels: int = 32  # flattened output pixels per vector of sums (a multiple of 8)
    channels: int = 16  # output channels per parallel task
    chunk: int = 0  # input channels per pass over the task's channels (a multiple of PTR_STEP; 0: all)

    @property
    def name(self) -> str:
        return f"p{self.pixels}c{self.channels}" + (f"k{self.chunk}" if self.chunk else "")

    def as_dict(self) -> dict:
        return asdict(self)


#: the named tiles (what records name)
TILES: dict[str, Tile] = {t.name: t for t in [
    *(Tile(p, c) for p in (8, 16, 32, 64, 128) for c in (8, 16, 32, 64, 128)),
    *(Tile(p, c, k) for p in (32, 64, 128) for c in (8, 16, 32, 64) for k in (8, 16, 32, 64, 128)),
]}
#: a chunk's rows of the copy that `default_tile` keeps within (the L1 of the CPUs measured is 32-48 KB)
DEFAULT_CHUNK_BYTES = 48 * 1024


def default_tile(wl) -> str:
    """The tile of a layer without a record, from what won the tile searches on znver3
    (`benchmarks/experiments/cpu-znver3-tune-cpu-csr-v3-chunks.json`): vectors of 64 positions
    (32 on maps under 1,024 positions), 64 output channels per task; for kernels of 9 taps or more
    on maps of 128 positions or more, chunks of input channels whose rows of the copy (chunk x KH
    rows of the vector plus the kernel row's reach) fit `DEFAULT_CHUNK_BYTES` (headline 8, conv3
    3x3 32-64 won; chunks never gained on 1x1 layers, the phased 2x2 ones, or 7x7 maps)."""
    plane = Plane.of(wl)
    pixels = 64 if plane.needed >= 1024 else 32
    kh, kw = wl.kernel_shape[:2]
    cin = wl.input_shape[3]
    chunk = 0
    if kh * kw >= 9 and plane.needed >= 128:
        row_bytes = kh * (pixels + (kw - 1) * wl.dilations[1]) * 4
        fitting = [k for k in sorted({t.chunk for t in TILES.values()} - {0}) if k * row_bytes <= DEFAULT_CHUNK_BYTES]
        chunk = fitting[-1] if fitting and fitting[-1] < cin else 0
    return Tile(pixels, 64, chunk).name


@dataclass(frozen=True)
class Plane:
    """Where a stride-1 layer's input lies in the channel-major copy, and which flattened output
    positions a tile computes (see the module docstring). Independent of the tile, so that the
    packed offsets are too: each tile copies only the part of a channel's plane that it reads."""

    height: int  # padded input rows (Hp)
    width: int  # padded input columns (Wp): also the row pitch of the flattened output positions
    top: int  # padding above and left of the input
    left: int
    needed: int  # the last output pixel's flattened position, plus one
    reach: int  # how far past its position an output reads: the dilated kernel's last tap
    pitch: int  # floats from one channel's plane to the next (room for the largest tile)

    @staticmethod
    def of(wl) -> "Plane":
        hp, wp = wl.padded_hw
        (oh, ow), (eh, ew) = wl.output_hw, wl.kernel_extent
        needed, reach = (oh - 1) * wp + ow, (eh - 1) * wp + ew - 1
        largest = max(t.pixels for t in TILES.values())
        pitch = _round_up(_round_up(needed, largest) + reach, COPY_BLOCK)
        return Plane(hp, wp, wl.pads[0][0], wl.pads[1][0], needed, reach, pitch)

    def positions(self, pixels: int) -> int:
        """Flattened output positions a tile of `pixels` computes: whole blocks."""
        return _round_up(self.needed, pixels)

    def copied(self, pixels: int) -> int:
        """The leading floats of each channel's plane that such a tile reads (whole copy blocks)."""
        return _round_up(self.positions(pixels) + self.reach, COPY_BLOCK)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def ptr_columns(cin: int) -> int:
    """Entries per output channel of the row-pointer table."""
    return -(-cin // PTR_STEP) + 1


def pack(wl, kernel) -> list[np.ndarray]:
    """(ptr, offsets, vals) of a `SparseKernel` for layer `wl`: its rows without the ELL padding,
    each nonzero's input as an offset into the channel-major copy (at least one entry each, so that
    a kernel of zeros still compiles); ``ptr[co, i]`` (Cout x `ptr_columns`) is where channel co's
    nonzeros of input channel ``PTR_STEP * i`` onwards start (rows are sorted by input channel)."""
    _, ci, kh, kw, vals = kernel.compressed_rows(taps=True)
    plane = Plane.of(wl)
    dh, dw = wl.dilations
    offsets = (ci.astype(np.int64) * plane.pitch + kh * dh * plane.width + kw * dw).astype(np.int32)
    ptr = kernel.row_pointers(PTR_STEP)  # Cout x ptr_columns(Cin)
    if offsets.size == 0:
        offsets, vals = np.zeros(1, np.int32), np.zeros(1, np.float32)
    return [ptr.reshape(-1), offsets, vals]


def emit(wl, nnz: int, tile: Tile) -> tirx.PrimFunc:
    """The PrimFunc ``f(x, ptr, offsets, vals, [bias], out)`` of stride-1 layer `wl` (NHWC)."""
    bias, activation = wl.has_bias, wl.activation
    n, h, w, cin = wl.input_shape
    _, oh, ow, cout = wl.output_shape
    pl = Plane.of(wl)
    wp, length, filled = pl.width, pl.pitch, pl.height * pl.width
    pb_len, cb_len = tile.pixels, tile.channels
    n_pb = pl.positions(pb_len) // pb_len
    n_cb = -(-cout // cb_len)
    nnz = max(nnz, 1)
    n_cblk = -(-cin // COPY_BLOCK)
    n_pblk = pl.copied(pb_len) // COPY_BLOCK
    cols = ptr_columns(cin)
    # chunks of input channels: kq table entries each (one chunk of all of them where 0 or wider)
    kq = tile.chunk // PTR_STEP if 0 < tile.chunk < cin else cols - 1
    n_kc = -(-(cols - 1) // kq)

    def finish(y, co, bias_buf):
        if bias:
            y = y + bias_buf[co]
        return activate(y, activation)

    @T.prim_func(private=True)
    def body(x_nhwc: T.Buffer((n, h, w, cin), "float32"), ptr: T.Buffer((cout * cols,), "int32"),
             offsets: T.Buffer((nnz,), "int32"), vals: T.Buffer((nnz,), "float32"),
             bias_buf: T.Buffer((cout,), "float32"), out_nhwc: T.Buffer((n, oh, ow, cout), "float32")):
        x_in = T.decl_buffer((n * h * w * cin,), "float32", data=x_nhwc.data)
        out = T.decl_buffer((n * oh * ow * cout,), "float32", data=out_nhwc.data)
        xc = T.alloc_buffer((n * cin * length,), "float32")
        # the channel-major copy with its zero border, in blocks of channels x positions, channels innermost
        for blk in T.parallel(n * n_cblk * n_pblk):
            for pi in range(COPY_BLOCK):
                for ci in range(COPY_BLOCK):
                    b = T.meta_var(blk // (n_cblk * n_pblk))
                    c = T.meta_var(blk // n_pblk % n_cblk * COPY_BLOCK + ci)
                    p = T.meta_var(blk % n_pblk * COPY_BLOCK + pi)
                    ih = T.meta_var(p // wp - pl.top)
                    iw = T.meta_var(p % wp - pl.left)
                    if c < cin:
                        xc[(b * cin + c) * length + p] = T.if_then_else(
                            p < filled and 0 <= ih and ih < h and 0 <= iw and iw < w,
                            x_in[((b * h + T.max(T.min(ih, h - 1), 0)) * w + T.max(T.min(iw, w - 1), 0)) * cin + c],
                            T.float32(0))
        for task in T.parallel(n * n_pb * n_cb):
            sums = T.alloc_buffer((cb_len * pb_len,), "float32", scope="local")
            b = T.meta_var(task // (n_pb * n_cb))
            pb = T.meta_var(task // n_cb % n_pb)
            cb = T.meta_var(task % n_cb)
            # one pass per chunk of input channels: a chunk's rows of the copy stay in L1 while
            # every channel of the block takes its nonzeros there; the sums wait in `sums`
            for kc in range(n_kc):
                for cc in range(cb_len):
                    acc = T.alloc_buffer((pb_len,), "float32", scope="local")
                    for pp in T.vectorized(pb_len):
                        acc[pp] = T.if_then_else(kc == 0, T.float32(0), sums[cc * pb_len + pp])
                    if cb * cb_len + cc < cout:
                        lo = T.meta_var(ptr[(cb * cb_len + cc) * cols + kc * kq])
                        hi = T.meta_var(ptr[(cb * cb_len + cc) * cols + T.min((kc + 1) * kq, cols - 1)])
                        for j in T.serial(hi - lo):
                            for pp in T.vectorized(pb_len):
                                acc[pp] = acc[pp] + vals[lo + j] * xc[
                                    b * cin * length + offsets[lo + j] + pb * pb_len + pp]
                    for pp in T.vectorized(pb_len):
                        sums[cc * pb_len + pp] = acc[pp]
            # out leaves pixel by pixel, the block's channels contiguous (NHWC); positions in the
            # padding columns (ow <= column < Wp) are computed and dropped
            for pp in range(pb_len):
                for cc in range(cb_len):
                    q = T.meta_var(pb * pb_len + pp)
                    if q // wp < oh and q % wp < ow and cb * cb_len + cc < cout:
                        out[((b * oh + q // wp) * ow + q % wp) * cout + cb * cb_len + cc] = finish(
                            sums[cc * pb_len + pp], cb * cb_len + cc, bias_buf)

    return kernel_function(body, bias)  # (x, ptr, offsets, vals, [bias], out)
