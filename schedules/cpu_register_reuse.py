"""Register reuse on the CPU (LLVM): the kernel's pattern compiled into the code, vectors along pixels.

The CPU counterpart of `cuda_register_reuse.py` (issue 15's lever): every nonzero of the kernel is
one vector FMA whose weight is an immediate (a splat constant), whose input is a vector of
`lanes` output pixels of one input channel and whose sum is a register, so one loaded input
vector feeds every nonzero of that channel in the group and no weight is loaded as data.

For a 1x1 layer with weight matrix ``w`` (Cin, Cout), flattened output pixels in blocks of
``lanes`` and groups of ``lanes`` output channels, parallel over tiles of `blocks` blocks:

1. relayout: the input channels of the tile's blocks are transposed (lanes x lanes shuffles) into
   a channel-major scratch on the stack, ``xt[block, Cin, lanes]``, so the `lanes` pixels of one
   channel are one vector load;
2. FMAs, per group (each group's code one straight-line run, looped over the tile's blocks so it
   is fetched once per tile): ``acc[j] += xt[block, ci] * w[ci, co_j]`` for the group's nonzeros
   (``lanes`` accumulators in registers), then bias/activation, and the accumulators transposed
   back so each pixel's `lanes` channels are one vector store.

A KxK kernel is the sum over its taps of 1x1 steps on the shifted input (as on CUDA): the
scratch holds one channel-major copy per tap with a nonzero (zeros outside the image). Halo tiles
(``halo``, stride 1 along the width): a parallel iteration's pixels are a segment of one output
row, and the scratch holds, per kernel row with a nonzero and input channel, the segment's input
columns with the kernel's halo once; the FMAs of tap (kh, kw) load their vector at offset kw (an
unaligned load), so the relayout copies KH rows instead of KH x KW.
The algorithm `cpu-register-reuse` (`tvm_sparseconv/algorithms/cpu_register_reuse.py`) builds it with a `Tile`;
`benchmarks/experiments/cpu_register_reuse.py` measures it against TensorFlow and writes its records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from tvm import tirx

from tvm_sparseconv.algorithms.base import activate

from .pattern_code import halo_input, tap_input

F32 = "float32"
#: bump when the emitted code changes for the same inputs (part of the compiled module's cache key)
EMITTER_VERSION = 3


@dataclass(frozen=True)
class Tile:
    """One point of the design space (what a record keeps per layer shape)."""

    lanes: int = 8  # floats per vector (8: AVX2, 16: AVX-512)
    blocks: int = 4  # blocks of `lanes` pixels per parallel iteration
    halo: bool = False  # a segment of one output row per iteration, its input rows staged once with the halo

    def as_dict(self) -> dict:
        return asdict(self)


#: the design space measured so far (benchmarks/experiments/cpu_register_reuse.py), by name
TILES: dict[str, Tile] = {f"l{lanes}b{blocks}{'h' if halo else ''}": Tile(lanes, blocks, halo) for lanes in (8, 16)
                          for blocks in (1, 2, 4, 8) for halo in (False, True)}
#: the tile for a layer without a record: blocks=4 won all 12 layers measured on znver3 (AVX2)
DEFAULT_TILE = "l8b4"


def _ramp(base, lanes: int):
    return tirx.Ramp(base, 1, lanes)


def _transpose(vectors: list, lanes: int) -> list:
    """lanes vectors of lanes values -> the transposed vectors (vector k: lane k of each)."""
    return [tirx.Shuffle(vectors, [tirx.const(i * lanes + k, "int32") for i in range(lanes)]) for k in range(lanes)]


def scratch_rows(kernel_shape, tile: Tile) -> int:
    """Rows (a tap or kernel row, and an input channel vector of 8) the relayout fills per block."""
    kh_, kw_, cin, _ = kernel_shape
    return kh_ * (1 if tile.halo else kw_) * -(-cin // 8)


def emit(w: np.ndarray, input_shape, output_hw, strides, pads, bias: bool = False, activation: str | None = None,
         dilations=(1, 1), lanes: int = 8, blocks: int = 1, halo: bool = False) -> tirx.PrimFunc:
    """``out = act(conv2d(x, w) + bias)`` for this `w` (HWIO, or (Cin, Cout) for 1x1), NHWC.

    `lanes`: floats per vector (8: AVX2, 16: AVX-512); `blocks`: blocks of `lanes` pixels per
    parallel iteration, each group's code looped over them (code stays in the instruction cache
    for `blocks` runs; the scratch holds `blocks` x rows x lanes floats). `halo`: see the module
    docstring (stride 1 along the width only)."""
    w = np.asarray(w, np.float32)
    if w.ndim == 2:
        w = w[None, None]
    kh_, kw_, cin, cout = w.shape
    n, h, wd, _ = input_shape
    oh_, ow_ = output_hw
    L, B = lanes, blocks
    if halo and strides[1] != 1:
        raise ValueError(f"halo tiles need stride 1 along the width, got strides {tuple(strides)}")
    n_pix = n * oh_ * ow_
    n_groups = -(-cout // L)
    if halo:  # parallel iterations: (output row, segment of L*B columns); scratch rows: (kernel row, channel)
        seg = L * B
        segments = -(-ow_ // seg)
        n_tiles = n * oh_ * segments
        khs = [kh for kh in range(kh_) if np.any(w[kh])] or [0]
        row_len = -(-(seg + (kw_ - 1) * dilations[1]) // L) * L  # the segment's input columns, whole vectors
        rows = len(khs) * cin
        taps = [(kh, None) for kh in khs]
    else:
        n_tiles = -(-n_pix // (L * B))
        taps = [(kh, kw) for kh in range(kh_) for kw in range(kw_) if np.any(w[kh, kw])] or [(0, 0)]
        rows = len(taps) * cin  # rows of the channel-major scratch: (tap, input channel)
    vec_in = cin % L == 0
    zero = tirx.const(0.0, F32)

    x = tirx.decl_buffer(tuple(input_shape), F32, "x")
    out = tirx.decl_buffer((n, oh_, ow_, cout), F32, "out")
    b = tirx.decl_buffer((cout,), F32, "bias") if bias else None
    x_flat = tirx.decl_buffer((n * h * wd * cin,), F32, "x_flat", data=x.data)
    out_flat = tirx.decl_buffer((n_pix * cout,), F32, "out_flat", data=out.data)
    xt = tirx.decl_buffer((rows * row_len,) if halo else (B * rows * L,), F32, "xt", scope="local")  # the tile's rows
    xin = tirx.decl_buffer((L * L,), F32, "xin", scope="local")
    tile = tirx.Var("tile", "int32")

    if halo:
        out_row, col0 = tirx.floordiv(tile, segments), tirx.floormod(tile, segments) * seg

    def source(p, kh: int, kw: int | None):
        """(flat offset of the input of the tile's p-th pixel at tap (kh, kw), clamped; whether it
        lies inside); halo tiles (kw None): of the p-th staged column of kernel row kh."""
        if halo:
            (img, r, c), inside = halo_input(out_row, col0 + p, (h, wd), output_hw, strides, pads, dilations, kh)
        else:
            (img, r, c), inside = tap_input(tile * B * L + p, n_pix, (h, wd), output_hw, strides, pads, dilations, kh, kw)
        return ((img * h + r) * wd + c) * cin, inside

    def row(bi, t: int, ci) -> tirx.PrimExpr:
        """Scratch offset of block bi's vector of tap t (halo: column chunk bi of kernel row t), channel ci."""
        return (t * cin + ci) * row_len + bi * L if halo else ((bi * rows) + t * cin + ci) * L

    # 1. relayout of the tile's blocks: xt[block, (tap, ci), pixel]. The loads (clamped into x) and
    # the zeroing outside the image are separate statements: TVM simplifies a Select's value under
    # its condition and would drop the clamp (see the CUDA emitter).
    bi = tirx.Var("bi", "int32")
    relayout = []
    for t, (kh, kw) in enumerate(taps):
        srcs = [source(bi * L + i, kh, kw) for i in range(L)]
        if vec_in:
            # a loop over the channel vectors, not straight-line code: LLVM's time on unrolled
            # transposes grew with taps x Cin / lanes (conv3 3x3: 144 of them, 150 s of its compile)
            cv = tirx.Var("cv", "int32")
            body = [tirx.BufferStore(xin, tirx.BufferLoad(x_flat, [_ramp(off + cv * L, L)]), [_ramp(i * L, L)])
                    for i, (off, _) in enumerate(srcs)]
            vecs = [tirx.Select(tirx.Broadcast(inside, L), tirx.BufferLoad(xin, [_ramp(i * L, L)]), tirx.Broadcast(zero, L))
                    for i, (_, inside) in enumerate(srcs)]
            body += [tirx.BufferStore(xt, v, [_ramp(row(bi, t, cv * L + k), L)]) for k, v in enumerate(_transpose(vecs, L))]
            relayout.append(tirx.For(cv, 0, cin // L, tirx.ForKind.SERIAL, tirx.SeqStmt(body)))
        else:
            ci = tirx.Var("ci", "int32")
            body = []
            for i, (off, inside) in enumerate(srcs):
                body.append(tirx.BufferStore(xin, x_flat[off + ci], [i]))
                body.append(tirx.BufferStore(xt, tirx.Select(inside, xin[i], zero), [row(bi, t, ci) + i]))
            relayout.append(tirx.For(ci, 0, cin, tirx.ForKind.SERIAL, tirx.SeqStmt(body)))
    relayout_loop = tirx.For(bi, 0, row_len // L if halo else B, tirx.ForKind.SERIAL,
                             relayout[0] if len(relayout) == 1 else tirx.SeqStmt(relayout))

    # 2. per group: one straight-line run of its FMAs, looped over the tile's blocks
    def group_code(g: int) -> tirx.Stmt:
        acc = tirx.decl_buffer((L * L,), F32, f"acc{g}", scope="local")  # one per group: TVM wants unique allocations
        gb = tirx.Var(f"b{g}", "int32")
        body = [tirx.BufferStore(acc, tirx.Broadcast(zero, L), [_ramp(j * L, L)]) for j in range(L)]
        for t, (kh, kw0) in enumerate(taps):
            for kw in range(kw_) if halo else [kw0]:  # halo: the row's taps, each at its offset in the row
                block = w[kh, kw, :, g * L:(g + 1) * L]
                for ci in np.nonzero(np.any(block, axis=1))[0]:
                    at = row(gb, t, int(ci)) + (kw * dilations[1] if halo else 0)
                    xv = tirx.BufferLoad(xt, [_ramp(at, L)])
                    for j in np.nonzero(block[ci])[0]:
                        jj = int(j) * L
                        body.append(tirx.BufferStore(
                            acc, tirx.BufferLoad(acc, [_ramp(jj, L)]) + xv * tirx.Broadcast(tirx.const(float(block[ci, j]), F32), L),
                            [_ramp(jj, L)]))
        width = min(L, cout - g * L)
        vals = []
        for j in range(L):
            v = tirx.BufferLoad(acc, [_ramp(j * L, L)])
            if b is not None and j < width:
                v = v + tirx.Broadcast(b[g * L + j], L)
            vals.append(activate(v, activation, L))
        for i, pix in enumerate(_transpose(vals, L)):  # pix: pixel i's L channels
            if halo:
                p, exists = out_row * ow_ + col0 + gb * L + i, col0 + gb * L + i < ow_
            else:
                p = (tile * B + gb) * L + i
                exists = p < n_pix
            if width == L:
                store = tirx.BufferStore(out_flat, pix, [_ramp(p * cout + g * L, L)])
            else:  # a partial last group: its channels one by one
                store = tirx.SeqStmt([tirx.BufferStore(out_flat, tirx.Shuffle([pix], [tirx.const(j, "int32")]),
                                                       [p * cout + g * L + j]) for j in range(width)])
            body.append(tirx.IfThenElse(exists, store, None))
        return tirx.SeqStmt([tirx.AllocBuffer(acc), tirx.For(gb, 0, B, tirx.ForKind.SERIAL, tirx.SeqStmt(body))])

    per_tile = [tirx.AllocBuffer(xt), tirx.AllocBuffer(xin), relayout_loop] + [group_code(g) for g in range(n_groups)]
    loop = tirx.For(tile, 0, n_tiles, tirx.ForKind.PARALLEL, tirx.SeqStmt(per_tile))
    stmt = tirx.SeqStmt([tirx.DeclBuffer(x_flat, data=x.data), tirx.DeclBuffer(out_flat, data=out.data), loop])
    params = [x] + ([b] if b is not None else []) + [out]
    return tirx.PrimFunc(params, stmt).with_attr({"global_symbol": "sparse_conv2d", "tirx.noalias": True})
