"""Algorithm "union-tf32": TF32 tensor cores on a dense GEMM per group of output channels (opt-in precision).

Output channels go in groups of ``GROUP`` = 8 (the n of ``mma.sync.m16n8k8.tf32``). Each group's
taps (kh, kw, ci) are the union of its channels' nonzeros, padded to a common multiple of 8 (the
mma's k), so a group is a dense GEMM: (output pixels x union taps) @ (union taps x 8 channels),
with zeros where a channel has no weight at a tap. On unstructured 90% pruning 8 channels share
about 58% of the dense taps (`benchmarks/experiments/tf32_union_bound.md`), so the tensor cores
do about 5.8x the useful multiply-adds, at 8x the fp32 rate of the CUDA cores and one gathered
input value per 8 multiply-adds.

Stages (block names are what the schedule rules in `schedules/` look for):

- ``x_tf32``: the input rounded to TF32 (nearest, ties away from zero, as ``cvt.rna.tf32.f32``; the
  tensor cores would otherwise truncate), zero outside it (TensorFlow's padding), its channels padded
  to whole chunks. For 1x1 layers it is the view on flattened output pixels,
  ``xs[p, ch] = x[n, oh*sh - pt, ow*sw - pl, ch]`` (p = (n, oh, ow); zeros past the last pixel up
  to whole mma tiles, `pointwise_pixels`), which the CUDA rule stages
  per chunk of ``chunk`` channels in shared memory for all the block's groups; otherwise it is the
  padded input ``xs[n, r, c, ch]`` (chunks of ``CHUNK_KXK`` channels; with a column stride s,
  ``xs[n, r, phase, j, ch]`` of column ``j*s + phase``, `column_phases`, so that consecutive
  output pixels read consecutive staged positions), whose rows the CUDA rule stages per block of
  output rows x tiles of columns (`block_tiles`: a box TVM can bound) and chunk; whole images at
  their pitch (`image_pitch`) are ``xs[n, r*pitch + c, ch]``, the padded input's positions flattened
  (strided: by phase plane, ``xs[n, (ph*sw + pc)*plane + i*pitch + j, ch]`` of input row ``i*sh +
  ph`` and column ``j*sw + pc``, `image_plane`).
- ``a_tf32``: the gathered operand ``a[p, g, c, k]``: for group g and chunk c, union position k,
  the input at the tap ``taps[g, c, k] = ci_in_chunk + kw_offset[kw] + kh_offset[kh]`` (`tap_code`: for
  KxK layers the tap's offset in a block's staged input box, so that an A element's shared-memory
  address is its pixel's plus the tap; the rule declares the region TVM cannot bound,
  `gather_region`). The CUDA rule computes
  it into the mma's A fragments (registers), never into memory. For KxK layers p is
  ``(n, row, column)`` of `pixel_grid`: the output rows padded to whole 16-pixel mma tiles, or for
  narrow maps (`whole_images`) each image's flattened pixels as one padded row (where it costs no
  tile, at the staged input's pitch, `image_pitch`: a pixel's staged position is then its grid
  position).
- ``conv``: ``conv[p, co] = sum_{c,k} a[p, co // 8, c, k] * w[co // 8, c, k, co % 8]``, where the
  weights are stored as the mma's B fragments, ``weights[g, c, k // 8, lane, reg]`` with
  ``(lane, reg) = (j*4 + k % 4, k % 8 // 4)`` (``schedules/mma_tf32.b_layout``): a lane's two
  weights of a k step are adjacent (flattened pixels: a warp's 16-pixel mma tile is any 16
  consecutive pixels, whatever the width). The union positions of a group are ordered so that
  each aligned quad has channels of distinct residues mod 4 (`bank_spread`), padding taps
  (weight 0) of the missing residues filling quads where positions are left.
- ``epilogue``: the NHWC output, ``act(conv[(n*OH + oh)*OW + ow, co] + bias[co])`` for 1x1 layers
  (always present: it is also the reshape to NHWC and, for KxK layers, drops the grid's padding).

Weights are rounded to TF32 when packed. The compiled function's arguments, in order:
x, weights (groups, chunks, K/8, 32, 2), taps (groups, chunks, K), [bias], out.
Format sizes in the workload: ``ell_width`` = K (the longest union of a group within a chunk,
padded to 8), ``chunk`` = input channels per chunk. Most (group, chunk)s need fewer than K/8 k
steps (block-pruned ResNet-50 at 90%: 9-44% fewer on average): the packed taps say how many each
uses (`skipped_steps_code`) and the build lets a warp skip the steps past all its groups'
(`tir_build`).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import SparseKernel
from ..tir_build import WARP_FRAGMENTS_ATTR
from ..workload import ConvWorkload
from .base import CONV, EPILOGUE, Algorithm, finish

A_TF32 = "a_tf32"
X_TF32 = "x_tf32"
GROUP = 8  # output channels per group: the n of mma m16n8k8
K_STEP = 8  # union taps per mma: its k
M_TILE = 16  # output pixels per mma: its m
#: input channels per chunk of a 1x1 layer: each group's union within a chunk pads to a multiple of
#: 8 taps, so wider chunks pad less (K / chunk 0.12-0.25 at 256 against 0.25-0.38 at 64 on
#: block-pruned ResNet-50, 0.62-0.75 against 0.62-0.88 elementwise); a tile of 32 pixels x 256
#: channels (+ padding) is 33 KB. Untuned on the H200, 256 ran 1.1-1.4x faster than 64 on all four
#: layers tried (benchmarks/experiments/union_tf32.md, "Chunk width, measured")
CHUNK_1X1 = 256
#: input channels per chunk of other layers: their staged tile is the input box of a block's output
#: rows x column tiles (`block_tiles`), e.g. 10 x 18 positions of 36 words (32 channels, padded)
#: on ResNet-50's conv2 3x3
CHUNK_KXK = 32
#: the narrower chunk a whole-image layer takes where a whole image's box does not fit an
#: algorithm's staged tile at `CHUNK_KXK` but does at this (`layer_chunk`): conv5 3x3 s2's 256
#: positions x 36 words (36.9 KB) fit union-tf32's one tile, not union-tf32-async's two of 24 KB;
#: at 16 channels (20 words, 20.5 KB) they do, and its copy overlaps the mma (tuned at 32, union-tf32
#: ran 37.9 us on an input in L2, 49.7 in the network bench, where 16 chunks each wait on DRAM)
CHUNK_WHOLE_IMAGE = 16
#: static shared memory a block's staged tiles may take
SHARED_BYTES = 48 * 1024
#: staged tiles a block holds at once, per algorithm of this family: union-tf32-async double-buffers
#: its tile (the next chunk's copy in flight while this one's mma run), so each tile gets half
STAGED_TILES = {"union-tf32": 1, "union-tf32-async": 2}
#: most mma tiles a block stages for (its warps x tiles per warp)
MAX_BLOCK_TILES = 8
#: function attribute: grid rows and column tiles per block of a KxK layer (`block_tiles`)
BLOCK_ATTR = "sparseconv_union_block"
#: `BLOCK_ATTR`'s key for a whole-image layer's `image_pitch`
IMAGE_PITCH_KEY = "image_pitch"
#: `BLOCK_ATTR`'s key for a strided whole-image layer's `image_plane`
IMAGE_PLANE_KEY = "image_plane"


def staging_budget(algorithm: str) -> int:
    """Bytes one staged tile of `algorithm` (union-tf32 or its async variant) may take."""
    if algorithm not in STAGED_TILES:
        raise ValueError(f"{algorithm!r} stages no union-tf32 tiles; expected one of {sorted(STAGED_TILES)}")
    return SHARED_BYTES // STAGED_TILES[algorithm]


def _budget(wl: ConvWorkload, budget: int | None) -> int:
    return budget if budget is not None else staging_budget(wl.algorithm)


def round_tf32(bits: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 mantissa bits; nearest, ties away from zero)."""
    u = np.asarray(bits, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _round_tf32_expr(v: tirx.PrimExpr) -> tirx.PrimExpr:
    u = tirx.reinterpret("uint32", v)
    return tirx.reinterpret("float32", (u + tirx.const(0x1000, "uint32")) & tirx.const(0xFFFFE000, "uint32"))


def is_pointwise(kernel_shape) -> bool:
    """1x1 layers: their input is staged per chunk of channels as a (pixels x channels) view."""
    return tuple(kernel_shape[:2]) == (1, 1)


def chunk_size(kernel_shape) -> int:
    """Input channels per chunk: `CHUNK_1X1` for 1x1 layers, `CHUNK_KXK` otherwise."""
    return min(kernel_shape[2], CHUNK_1X1 if is_pointwise(kernel_shape) else CHUNK_KXK)


def layer_chunk(wl: ConvWorkload, budget: int) -> int:
    """A layer's chunk width under a staged tile of `budget` bytes: `chunk_size`, or
    `CHUNK_WHOLE_IMAGE` for a narrow-map KxK layer whose whole image fits the tile only at that."""
    chunk = chunk_size(wl.kernel_shape)
    narrow = min(chunk, CHUNK_WHOLE_IMAGE)
    if (is_pointwise(wl.kernel_shape) or narrow == chunk or not _narrow_maps(wl)
            or whole_images(wl, chunk, budget) or not whole_images(wl, narrow, budget)):
        return chunk
    return narrow


#: a staged position's words are padded to `STAGE_ALIGN[1]` mod `STAGE_ALIGN[0]` (the rule's
#: `storage_align`): 8 consecutive positions (an A fragment's pixel rows) then start at 8 distinct
#: multiples of 4 modulo 32 banks (4(2m+1) i mod 32 for i < 8), so with the 4 channels of a tap
#: quad distinct mod 4 (`bank_spread`) a fragment load hits 32 distinct banks
STAGE_ALIGN = (8, 4)


def staged_row_words(chunk: int) -> int:
    """Words per staged input position: the chunk's channels padded by `STAGE_ALIGN`."""
    factor, offset = STAGE_ALIGN
    return chunk + (offset - chunk) % factor


def whole_images(wl: ConvWorkload, chunk: int | None = None, budget: int | None = None) -> bool:
    """Whether a KxK layer's pixel grid is each image's flattened pixels as one row: where its
    output rows are at most half an mma tile wide (padding each row to 16 pixels would more than
    double the work; ResNet-50's 7x7 maps) and a whole image's halo fits a staged tile (in chunks
    of `chunk` channels, default the workload's; `budget` bytes, default `staging_budget` of the
    workload's algorithm)."""
    return _narrow_maps(wl) and (
        whole_image_positions(wl) * staged_row_words(chunk or wl.chunk) * 4 <= _budget(wl, budget))


def _narrow_maps(wl: ConvWorkload) -> bool:
    """`whole_images`' shape condition: output rows at most half an mma tile wide, an image's
    pixels within `MAX_BLOCK_TILES` tiles."""
    oh, ow = wl.output_hw
    return 2 * ow <= M_TILE and -(-oh * ow // M_TILE) <= MAX_BLOCK_TILES


def image_pitch(wl: ConvWorkload) -> int | None:
    """Grid positions per output row of a whole-image layer whose pixels are laid out at the pitch
    of its staged input (`whole_images`: the padded input's width, or with a stride, the width of
    its planes of one (row, column) phase each, `image_plane`), or None where they are packed
    (``oh * ow``). At that pitch a pixel's staged position is its grid position and a tap's offset
    is a constant, so an A element's shared-memory address is the lane's base plus immediate
    offsets (packed, each element's row and column are a division by OW: conv5 3x3 b32 g8's k
    steps took 21.5 instructions per mma, against 12.8 on conv4 3x3's rows;
    `benchmarks/experiments/union_sass.py`, stop 51). Taken where the pitch's extra columns,
    which read halo and are never stored, take no more mma tiles (ResNet-50's 7x7 maps: 7 x 9 =
    63 positions in 4 tiles at stride 1, 7 x 8 = 56 at stride 2, as 49 packed)."""
    if is_pointwise(wl.kernel_shape) or not _narrow_maps(wl):
        return None
    (oh, ow), gw = wl.output_hw, wl.gather_hw[1]
    pitch = -(-gw // wl.strides[1])
    return pitch if -(-oh * pitch // M_TILE) <= -(-oh * ow // M_TILE) else None


def image_plane(wl: ConvWorkload, pitch: int) -> int:
    """Staged positions per phase plane of a whole image at `pitch` (`image_pitch`): with strides
    (sh, sw) the padded input's rows and columns go by their residues (ph, pc), plane ``ph*sw + pc``
    holding input (i*sh + ph, j*sw + pc) at ``i*pitch + j``, so that output pixel (oh, ow) reads
    tap (kh, kw) at its grid position plus a constant (`pitch_offset`). One plane at stride 1: the
    padded input's positions flattened."""
    return -(-wl.gather_hw[0] // wl.strides[0]) * pitch


def pitch_offset(rows: int, columns: int, strides: tuple[int, int], pitch: int, plane: int) -> int:
    """Staged positions from a pixel's grid position to its window's input `rows` down and
    `columns` across, in a whole image at `pitch` (`image_pitch`) of phase planes of `plane`
    positions (`image_plane`)."""
    (sh, sw) = strides
    return ((rows % sh) * sw + columns % sw) * plane + rows // sh * pitch + columns // sw


def pitch_window(strides: tuple[int, int], extent: tuple[int, int], pitch: int, plane: int) -> int:
    """Staged positions from a pixel's grid position past its window's farthest (`pitch_offset`
    over the kernel's `extent`): the span of the input it may read."""
    return 1 + max(pitch_offset(r, c, strides, pitch, plane) for r in range(extent[0]) for c in range(extent[1]))


def whole_image_positions(wl: ConvWorkload) -> int:
    """Positions of a whole image's staged box (`whole_images`): at `image_pitch`, from the grid's
    first position to the last one's window (`pitch_window`: the padded input's positions, by
    phase plane where strided, and past them whatever the grid's padding reads); packed, its
    padded rows x columns by phase."""
    (gh, gw), extent = wl.gather_hw, wl.kernel_extent
    pitch = image_pitch(wl)
    if pitch is not None:
        window = pitch_window(wl.strides, extent, pitch, image_plane(wl, pitch))
        return -(-wl.output_hw[0] * pitch // M_TILE) * M_TILE + window - 1
    return gh * column_phases(wl) * _phase_positions(gw, wl)


def column_phases(wl: ConvWorkload) -> int:
    """Phases of a KxK layer's staged columns: its column stride. A staged box keeps the input
    columns of each residue mod the stride together (column ``j*sw + phase`` at position ``phase *
    width + j``, `staged_box_width`), so consecutive output pixels read consecutive staged
    positions whatever the stride: with the input's own column order, stride-2 pixels were 2
    positions (72 words) apart, 8 of them on 4 bank offsets, 2.26-2.27 shared-memory wavefronts
    per A-fragment load on ResNet-50's 3x3 s2 layers, 1.24-1.25 by phase
    (`benchmarks/experiments/union_bank_conflicts.py`; H100 b32 g8: conv3 3x3 s2 48.4 -> 41.7
    us, the stem 57.4 -> 50.2). 1 for 1x1 layers (their view is strided already) and stride 1,
    where the layout is the input's."""
    return 1 if is_pointwise(wl.kernel_shape) else wl.strides[1]


def _phase_positions(columns: int, wl: ConvWorkload) -> int:
    """Positions of each phase (`column_phases`) a box of `columns` input columns holds."""
    return -(-columns // column_phases(wl))


def pointwise_pixels(wl: ConvWorkload) -> int:
    """A 1x1 layer's flattened output pixels N*OH*OW, padded to whole mma tiles (the padding
    pixels read zeros and are never stored: conv4 1x1 at batch 1, 196 pixels, computes 208)."""
    n, oh, ow, _ = wl.output_shape
    return -(-n * oh * ow // M_TILE) * M_TILE


def pixel_grid(wl: ConvWorkload, chunk: int | None = None, budget: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a KxK layer's conv per image: its output rows padded to whole mma tiles
    (the padding columns read zeros and are never stored), or with `whole_images` one row of the
    image's flattened pixels (at `image_pitch` where it has one) padded so."""
    oh, ow = wl.output_hw
    if whole_images(wl, chunk, budget):
        return 1, -(-oh * (image_pitch(wl) or ow) // M_TILE) * M_TILE
    return oh, -(-ow // M_TILE) * M_TILE


def block_tiles(wl: ConvWorkload, chunk: int | None = None, budget: int | None = None) -> tuple[int, int] | None:
    """(grid rows, column tiles) a block of a KxK layer computes: a box of the grid, so that its
    staged input is a box TVM's region analysis bounds (a run of flattened pixels across rows
    came out as the whole image). Of the boxes whose tiles (`MAX_BLOCK_TILES`) and staged input
    (`budget`, default `staging_budget`; chunks of `chunk` channels, default the workload's) fit: an even number of
    tiles where one fits (so that a warp can hold two: a loaded tap then serves both, e.g. 2 of
    conv4 3x3's 14 rows rather than 7: 35.8 -> 18 instructions per mma), the most tiles, then the
    least staged input per tile. None where not even one tile's input fits. (The rows are the
    untuned template's; a schedule may take more, `tallest_block_rows`: the TE and the tap codes
    depend on the tiles alone.)"""
    rows, cols = pixel_grid(wl, chunk, budget)
    tiles = cols // M_TILE
    words = staged_row_words(chunk or wl.chunk)
    budget = _budget(wl, budget)
    if whole_images(wl, chunk, budget):
        return 1, tiles
    fits = [(r * t % 2, -r * t, staged / (r * t), r, t)
            for r, t, staged in fitting_boxes(rows, tiles, wl.strides, wl.kernel_extent, words, budget)]
    return min(fits)[3:] if fits else None


def fitting_boxes(grid_rows: int, grid_tiles: int, strides: tuple[int, int], extent: tuple[int, int], words: int,
                  budget: int):
    """(rows, column tiles, staged bytes) of each block a KxK grid of `grid_rows` rows x
    `grid_tiles` column tiles divides into whose tiles (`MAX_BLOCK_TILES`) and staged box
    (`staged_box_bytes`, at most `budget`) fit."""
    for r in (r for r in range(1, grid_rows + 1) if grid_rows % r == 0):
        for t in (t for t in range(1, grid_tiles + 1) if grid_tiles % t == 0 and r * t <= MAX_BLOCK_TILES):
            staged = staged_box_bytes(r, t, strides, extent, words)
            if staged <= budget:
                yield r, t, staged


def staged_box_bytes(rows: int, tiles: int, strides: tuple[int, int], extent: tuple[int, int], words: int) -> int:
    """Bytes of the input box a KxK block of `rows` grid rows x `tiles` column tiles stages per
    chunk (`words` a staged position, `staged_row_words`): its rows' windows, each row's columns
    by phase (`column_phases`: the column stride; whole phases)."""
    (sh, sw), (eh, ew) = strides, extent
    return ((rows - 1) * sh + eh) * sw * -(-((tiles * M_TILE - 1) * sw + ew) // sw) * words * 4


def tallest_block_rows(block: dict, grid_rows: int, tiles: int, budget: int) -> int:
    """The most grid rows (a divisor of `grid_rows`) a block of `tiles` column tiles may hold with
    its staged box within `budget` bytes and its tiles within `MAX_BLOCK_TILES`, from a function's
    `BLOCK_ATTR` (`block`): a schedule's alternative to `block_tiles`' rows, which prefer an even
    tile count (conv4 3x3's 14 rows: 2 a block, its box 4 x 18 positions for 2 x 14 pixels; 7 a
    block stage 9 x 18 for 7 x 14, 36% fewer bytes a pixel)."""
    strides = (int(block["stride_h"]), int(block["stride_w"]))
    extent = (int(block["extent_h"]), int(block["extent_w"]))
    words = staged_row_words(int(block["chunk"]))
    return max((r for r, t, _ in fitting_boxes(grid_rows, tiles, strides, extent, words, budget) if t == tiles),
               default=1)


def staged_box_width(wl: ConvWorkload, chunk: int | None = None) -> int:
    """Positions of each phase (`column_phases`) in a row of a KxK layer's staged box: its column
    tiles' input (`block_tiles`), or with `whole_images` the image's."""
    if whole_images(wl, chunk):
        return _phase_positions(wl.gather_hw[1], wl)
    _, tiles = block_tiles(wl, chunk)
    return _phase_positions((tiles * M_TILE - 1) * wl.strides[1] + wl.kernel_extent[1], wl)


def staged_strides(wl: ConvWorkload, chunk: int | None = None) -> tuple[int, int, int]:
    """(words per staged position, per phase, per row) of a KxK layer's staged input box: a
    position is the chunk padded by `STAGE_ALIGN`, a phase `staged_box_width` positions, a row
    `column_phases` phases."""
    per_position = staged_row_words(chunk or wl.chunk)
    per_phase = per_position * staged_box_width(wl, chunk)
    return per_position, per_phase, per_phase * column_phases(wl)


def tap_code(wl: ConvWorkload, chunk: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(offset of each kw, offset of each kh): a packed tap is ``ci_in_chunk + kw_offsets[kw] +
    kh_offsets[kh]``. For KxK layers that is the tap's offset in the block's staged input box
    (`staged_strides`, dilations included; column ``kw*dw`` of a pixel's window is in phase
    ``kw*dw % sw``, ``kw*dw // sw`` positions on; a whole image at its pitch, `pitch_offset`), so
    an A element's shared-memory address is its pixel's plus the tap, one add (the power-of-two
    fields decoded by shifts and masks before it cost 13-19 instructions per mma on the 3x3
    layers, a division by 7 per element 37 on conv5's, `benchmarks/experiments/union_sass.py`).
    1x1 layers: the tap is the channel."""
    chunk = chunk or wl.chunk
    if is_pointwise(wl.kernel_shape):
        return (0,), (0,)
    kh_, kw_ = wl.kernel_shape[:2]
    (dh, dw), strides = wl.dilations, wl.strides
    per_position = staged_row_words(chunk)
    pitch = image_pitch(wl) if whole_images(wl, chunk) else None
    if pitch is not None:
        plane = image_plane(wl, pitch)
        return (tuple(per_position * pitch_offset(0, kw * dw, strides, pitch, plane) for kw in range(kw_)),
                tuple(per_position * pitch_offset(kh * dh, 0, strides, pitch, plane) for kh in range(kh_)))
    _, per_phase, per_row = staged_strides(wl, chunk)
    sw = strides[1]
    offsets = tuple(kw * dw % sw * per_phase + kw * dw // sw * per_position for kw in range(kw_))
    return offsets, tuple(per_row * dh * kh for kh in range(kh_))


def compact_code(kernel_shape, chunk: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A tap code (`tap_code`'s form) that packs taps densely, ``ci + chunk*(kw + KW*kh)``: the
    order of every layer's code, for counting and ordering unions."""
    kh_, kw_ = kernel_shape[:2]
    return tuple(chunk * kw for kw in range(kw_)), tuple(chunk * kw_ * kh for kh in range(kh_))


def decode_taps(taps: np.ndarray, code: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    """(ci in the chunk, kw, kh) of packed `taps` (`tap_code`'s `code`): a tap's (kh, kw) is the
    one with the largest offset not past it (every (kh, kw)'s offset is a chunk or more from the
    others')."""
    kw_offsets, kh_offsets = (np.asarray(o, np.int64) for o in code)
    taps = np.asarray(taps, np.int64)
    offsets = (kh_offsets[:, None] + kw_offsets[None, :]).ravel()
    order = np.argsort(offsets)
    which = order[np.searchsorted(offsets[order], taps, side="right") - 1]
    return taps - offsets[which], which % len(kw_offsets), which // len(kw_offsets)


def group_unions(kernel: SparseKernel, chunk: int | None = None,
                 code: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> list[list[np.ndarray]]:
    """[group][chunk]: the sorted taps of that group's `GROUP` output channels whose input channel
    is in chunk c (`chunk`: default `chunk_size`), packed as ``ci_in_chunk + code[0][kw] +
    code[1][kh]`` (default: `compact_code`; `tap_code` gives the kernel's, whose order may differ
    across kw phases but whose unions hold the same taps)."""
    cin, cout = kernel.shape[2:]
    chunk = chunk or chunk_size(kernel.shape)
    kw_offsets, kh_offsets = code or compact_code(kernel.shape, chunk)
    n_chunks = -(-cin // chunk)
    real = kernel.stored()
    ci = kernel.ci.astype(np.int64)
    which = ci // chunk
    packed = (ci - which * chunk) + np.asarray(kw_offsets, np.int64)[kernel.kw.astype(np.int64)] + (
        np.asarray(kh_offsets, np.int64)[kernel.kh.astype(np.int64)])
    unions = []
    for g in range(cout // GROUP):
        rows = slice(g * GROUP, (g + 1) * GROUP)
        taps, chunks = packed[rows][real[rows]], which[rows][real[rows]]
        unions.append([np.unique(taps[chunks == c]) for c in range(n_chunks)])
    return unions


def bank_spread(taps: np.ndarray, k_pad: int, chunk: int, used: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`taps` (one group's union in one chunk) laid out in `k_pad` positions for conflict-free
    A-fragment loads: (taps, whether each position is a real tap; the others carry weight 0).
    Only the first `used` positions (default all) hold taps or the quads' padding.

    A fragment load reads 8 pixel rows x 4 consecutive union positions of the staged tile, whose
    rows start at 8 distinct multiples of 4 modulo 32 banks (`STAGE_ALIGN`). Four positions whose
    taps differ modulo 4 then hit 32 distinct banks; a tap's residue is its channel's (`tap_code`'s
    fields are multiples of 4 words). So each aligned quad takes one tap of each residue while it
    can (largest classes first), then a padding tap (a channel of the missing residue at the box's
    first position) while the positions left allow, else another real tap. (KxK layers took their
    taps in sorted order until stop 43: 1.75 wavefronts per A load on conv4 3x3 b32 g8, 1.28 with
    the residues spread, 1.08 with padding in the quads, `tests/test_algorithms.py`; ncu had counted
    40% of its shared-memory wavefronts as excess.)"""
    classes = [list(taps[taps % 4 == r]) for r in range(4)]
    slack = (k_pad if used is None else used) - len(taps)
    out: list[int] = []
    real: list[bool] = []
    while any(classes) or len(out) % 4:
        have = {t % 4 for t in out[len(out) - len(out) % 4:]}
        fresh = sorted((r for r in range(4) if r not in have and classes[r]), key=lambda r: -len(classes[r]))
        pad = [r for r in range(4) if r not in have and r < chunk]
        if fresh:
            out.append(classes[fresh[0]].pop(0))
            real.append(True)
        elif pad and slack > 0 or not any(classes):
            out.append(pad[0] if pad else 0)
            real.append(False)
            slack -= 1
        else:  # no residue left that the quad lacks, nor room to pad: a bank conflict
            out.append(classes[max(range(4), key=lambda r: len(classes[r]))].pop(0))
            real.append(True)
    while len(out) < k_pad:
        out.append(0)
        real.append(False)
    return np.array(out, np.int64), np.array(real)


def chunked_format(kernel: SparseKernel, chunk: int) -> dict:
    """The format sizes with chunks of `chunk` input channels: K = the longest group union within
    a chunk, padded to the mma's k. Wider chunks pad less when a group's taps are few and spread
    (block-pruned channels: K 16 of 64, 40 of 256), and stage fewer pixels per block
    (`schedules/cuda_union_tf32.py`)."""
    longest = max((len(u) for per_chunk in group_unions(kernel, chunk) for u in per_chunk), default=0)
    return {"ell_width": max(-(-longest // K_STEP) * K_STEP, K_STEP), "chunk": min(chunk, kernel.shape[2])}


def own_steps(union) -> int:
    """k steps a (group, chunk)'s union takes: its taps, 8 a step."""
    return -(-len(union) // K_STEP)


def skipped_steps_code(steps: int) -> int:
    """The last tap of a (group, chunk) whose union takes `steps` k steps of the K/8 there are:
    -steps - 1 (negative: where it is gathered, the build clamps it to tap 0, whose weight there is
    0). The build (`schedules/cuda_union_tf32.skip_padding_steps`) reads it back to skip the rest."""
    return -steps - 1


def pack_union(wl: ConvWorkload, kernel: SparseKernel) -> tuple[np.ndarray, np.ndarray]:
    """(weights (groups, chunks, K/8, 32, 2) in B-fragment order, rounded to TF32; taps (groups,
    chunks, K)); padding has tap 0 and weight 0. Each (group, chunk)'s union fills its first
    ceil(len / 8) k steps; where steps are left after them, its last tap says how many it used
    (`skipped_steps_code`)."""
    chunk, k_pad = wl.chunk, wl.ell_width
    code = tap_code(wl)
    unions = group_unions(kernel, chunk, code)
    dense = kernel.to_dense()  # HWIO
    n_chunks = len(unions[0]) if unions else 1
    weights = np.zeros((len(unions), n_chunks, k_pad, GROUP), np.float32)
    taps = np.zeros((len(unions), n_chunks, k_pad), np.int32)
    for g, per_chunk in enumerate(unions):
        for c, u in enumerate(per_chunk):
            # its union laid out in its own steps only; the steps after it are padding, which the
            # build skips (`skipped_steps_code`)
            steps = own_steps(u)
            taps[g, c], real = bank_spread(u, k_pad, chunk, used=steps * K_STEP)
            if steps * K_STEP < k_pad:
                taps[g, c, -1] = skipped_steps_code(steps)
            ci, kw, kh = decode_taps(taps[g, c][real], code)
            weights[g, c, real] = dense[kh, kw, ci + c * chunk, g * GROUP:(g + 1) * GROUP]
    # B fragment order: [.., k // 8, lane = j*4 + k % 4, reg = k % 8 // 4]
    frag = weights.reshape(len(unions), n_chunks, k_pad // K_STEP, 2, 4, GROUP).transpose(0, 1, 2, 5, 4, 3)
    return round_tf32(np.ascontiguousarray(frag.reshape(len(unions), n_chunks, k_pad // K_STEP, 32, 2))), taps


def grid_pixel(r, q, image: tuple[int, int] | None) -> tuple:
    """The output (row, column) of a KxK layer's pixel-grid position (r, q) (`pixel_grid`): with
    `whole_images` (`image` = (OH, OW)) q is a flat pixel of the image, the grid's padding pixels
    clamped to its last row; else (r, q) itself."""
    if image is None:
        return r, q
    oh, ow = image
    return tirx.min(tirx.floordiv(q, ow), oh - 1), tirx.floormod(q, ow)


#: where the input is rounded to TF32: as it is staged ("copy", the algorithm's), or as each A
#: fragment element is gathered ("fragment": the staging is then a plain copy, which TVM can lower
#: to `cp.async` and overlap with the mma; union-tf32-async's, `union_tf32_async.py`)
ROUND_AT = ("copy", "fragment")


def union_tf32_te(wl: ConvWorkload, round_at: str = "copy") -> list[te.Tensor]:
    """Build the TE graph of `wl` (the input rounded to TF32 where `round_at` says, `ROUND_AT`);
    returns the argument tensors followed by the output."""
    if round_at not in ROUND_AT:
        raise ValueError(f"round_at must be one of {ROUND_AT}, got {round_at!r}")
    at_copy = _round_tf32_expr if round_at == "copy" else (lambda v: v)
    at_fragment = _round_tf32_expr if round_at == "fragment" else (lambda v: v)
    n, h, w, cin = wl.input_shape
    kh_, kw_, _, cout = wl.kernel_shape
    k_pad, chunk, groups = wl.ell_width, wl.chunk, cout // GROUP
    n_chunks = -(-cin // chunk)
    oh_, ow_ = wl.output_hw
    (pt, _), (pl, _) = wl.pads
    gh, gw = wl.gather_hw
    sh, sw = wl.strides
    dh, dw = wl.dilations
    pixels = n * oh_ * ow_

    x = te.placeholder((n, h, w, cin), "float32", name="x")
    weights = te.placeholder((groups, n_chunks, k_pad // K_STEP, 32, 2), "float32", name="weights")
    taps = te.placeholder((groups, n_chunks, k_pad), "int32", name="taps")

    def padded(b, r, col, ch):
        inside = tirx.all(r >= 0, r < h, col >= 0, col < w, ch < cin)
        return at_copy(tirx.if_then_else(inside, x[b, r, col, ch], tirx.const(0.0, "float32")))

    def pixel(p):
        b, rest = tirx.floordiv(p, oh_ * ow_), tirx.floormod(p, oh_ * ow_)
        return b, tirx.floordiv(rest, ow_), tirx.floormod(rest, ow_)

    if is_pointwise(wl.kernel_shape):
        grid = pointwise_pixels(wl)

        def view(p, ch):
            b, oh, ow = pixel(p)
            return padded(b, oh * sh - pt, ow * sw - pl, ch)

        def padded_view(p, ch):  # pixels past the last read zeros (at the last pixel's address)
            b, oh, ow = pixel(tirx.min(p, pixels - 1))
            return tirx.if_then_else(p < pixels, padded(b, oh * sh - pt, ow * sw - pl, ch), tirx.const(0.0, "float32"))

        # (a layer of whole tiles keeps its TE as it was: committed records name it)
        xs = te.compute((grid, n_chunks * chunk), view if grid == pixels else padded_view, name=X_TF32)

        def gather(p, g, c, k):
            # Clamped so that TVM's region analysis can bound a chunk (packed taps are in range).
            return at_fragment(xs[p, c * chunk + tirx.max(tirx.min(taps[g, c, k], chunk - 1), 0)])

        a = te.compute((grid, groups, n_chunks, k_pad), gather, name=A_TF32)
        pix = (grid,)
        at = lambda b, oh, ow: ((b * oh_ + oh) * ow_ + ow,)  # noqa: E731 - the conv's pixel of an output
    else:
        # A grid of rows padded to whole mma tiles (`pixel_grid`), so that a block's box of rows x
        # column tiles stages as one box of the padded input; padding pixels read zeros (or a real
        # pixel again) and are never stored.
        rows, cols = pixel_grid(wl)
        flat = whole_images(wl)
        pitch = image_pitch(wl) if flat else None
        width = gw if flat else gw + (cols - ow_) * sw
        per_position, per_phase, per_row = staged_strides(wl)
        phases = column_phases(wl)
        if pitch is not None and (sh, sw) == (1, 1):  # the padded input's positions flattened: xs[b, r*pitch + col, ch]
            xs = te.compute((n, whole_image_positions(wl), n_chunks * chunk),
                            lambda b, pos, ch: padded(b, tirx.floordiv(pos, pitch) - pt, tirx.floormod(pos, pitch) - pl,
                                                      ch), name=X_TF32)
        elif pitch is not None:  # by phase plane (`image_plane`): xs[b, (ph*sw + pc)*plane + i*pitch + j, ch]
            # (the stride-1 branch above is this one's single plane, kept as written: its TE is
            # what stop 51's committed records of conv5 3x3 name, and this form would change it)
            plane = image_plane(wl, pitch)

            def planes(b, pos, ch):
                which, at = tirx.floordiv(pos, plane), tirx.floormod(pos, plane)
                return padded(b, tirx.floordiv(at, pitch) * sh + tirx.floordiv(which, sw) - pt,
                              tirx.floormod(at, pitch) * sw + tirx.floormod(which, sw) - pl, ch)

            xs = te.compute((n, whole_image_positions(wl), n_chunks * chunk), planes, name=X_TF32)
        elif phases == 1:
            xs = te.compute((n, gh, width, n_chunks * chunk),
                            lambda b, r, col, ch: padded(b, r - pt, col - pl, ch), name=X_TF32)
        else:  # columns by phase (`column_phases`): xs[b, r, phase, j] is column j*sw + phase
            xs = te.compute((n, gh, phases, _phase_positions(width, wl), n_chunks * chunk),
                            lambda b, r, ph, j, ch: padded(b, r - pt, j * sw + ph - pl, ch), name=X_TF32)

        def gather(b, r, q, g, c, k):
            # The tap's offsets in rows, (phases,) columns and channels of the staged box
            # (`tap_code`): the staged index, rows * per_row (+ phase * per_phase) + columns *
            # per_position + channel, simplifies to the pixel's plus the tap. (TVM cannot bound these
            # data-dependent fields: the CUDA rule declares the block's read region, `gather_region`.)
            t = taps[g, c, k]
            ch = c * chunk + tirx.floormod(t, per_position)
            if pitch is not None:  # grid position q is its window's first staged position
                return at_fragment(xs[b, q + tirx.floordiv(t, per_position), ch])
            dr, in_row = tirx.floordiv(t, per_row), tirx.floormod(t, per_row)
            oh, ow = grid_pixel(r, q, (oh_, ow_) if flat else None)
            if phases == 1:
                return at_fragment(xs[b, oh * sh + dr, ow * sw + tirx.floordiv(in_row, per_position), ch])
            ph, dj = tirx.floordiv(in_row, per_phase), tirx.floordiv(tirx.floormod(in_row, per_phase), per_position)
            return at_fragment(xs[b, oh * sh + dr, ph, ow + dj, ch])

        a = te.compute((n, rows, cols, groups, n_chunks, k_pad), gather, name=A_TF32)
        pix = (n, rows, cols)
        at = (lambda b, oh, ow: (b, 0, oh * (pitch or ow_) + ow)) if flat else (lambda b, oh, ow: (b, oh, ow))  # noqa: E731

    rc = te.reduce_axis((0, n_chunks), name="c")
    rk = te.reduce_axis((0, k_pad), name="k")

    def mma_sum(pixel_index: tuple, co):
        return te.sum(a[(*pixel_index, co // GROUP, rc, rk)]
                      * weights[co // GROUP, rc, rk // K_STEP, co % GROUP * 4 + rk % 4, rk % K_STEP // 4], axis=[rc, rk])

    if len(pix) == 1:
        conv = te.compute((*pix, cout), lambda p, co: mma_sum((p,), co), name=CONV)
    else:
        conv = te.compute((*pix, cout), lambda b, r, q, co: mma_sum((b, r, q), co), name=CONV)
    args = [x, weights, taps]
    bias = te.placeholder((cout,), "float32", name="bias") if wl.has_bias else None
    if bias is not None:
        args.append(bias)

    out = te.compute((n, oh_, ow_, cout),
                     lambda b, oh, ow, co: finish(wl, conv[(*at(b, oh, ow), co)], bias, co), name=EPILOGUE)
    return args + [out]


def block_pitch(block) -> int | None:
    """A function's `BLOCK_ATTR` (`block`)'s `image_pitch`, None where the layer has none."""
    return int(block[IMAGE_PITCH_KEY]) if IMAGE_PITCH_KEY in block else None


def gather_region(block: dict):
    """The input a KxK layer's A element (`a_tf32[b, r, q, g, c, k]`) may read, as
    `Schedule.annotate_buffer_access` takes it, from the function's `BLOCK_ATTR` (`block`): its
    pixel's window of the kernel's extent, in chunk c. TVM cannot bound the data-dependent taps
    (`tap_code`) itself, and the CUDA rule stages the region of a block's elements."""
    sh, sw, eh, ew, chunk, oh_, ow_ = (int(block[key]) for key in (
        "stride_h", "stride_w", "extent_h", "extent_w", "chunk", "image_h", "image_w"))
    pitch = block_pitch(block)
    if pitch is not None:
        plane = int(block[IMAGE_PLANE_KEY]) if IMAGE_PLANE_KEY in block else 0  # (none at stride 1)
        window = pitch_window((sh, sw), (eh, ew), pitch, plane)

    def region(b, r, q, g, c, k):
        if pitch is not None:  # (`image_pitch`) from the position to its window's last
            return b, (q, q + window), (c * chunk, c * chunk + chunk)
        oh, ow = grid_pixel(r, q, (oh_, ow_) if ow_ else None)
        if sw == 1:
            return b, (oh * sh, oh * sh + eh), (ow * sw, ow * sw + ew), (c * chunk, c * chunk + chunk)
        # columns by phase (`column_phases`): every phase, the window's positions in each
        return b, (oh * sh, oh * sh + eh), (0, sw), (ow, ow + -(-ew // sw)), (c * chunk, c * chunk + chunk)
    return region


class UnionTF32(Algorithm):
    """Dense TF32 mma over each 8-channel group's union of taps (CUDA, sm_80 and newer; opt-in)."""

    name = "union-tf32"
    stage = X_TF32
    precision = "tf32"
    #: where the input is rounded to TF32 (`ROUND_AT`)
    round_at = "copy"

    def applies(self, wl: ConvWorkload | None, target_kind: str) -> bool:
        """CUDA, Cout a multiple of 8, and for a KxK layer one tile's input fitting a block's
        shared memory (1x1 layers pad their flattened pixels to whole mma tiles,
        `pointwise_pixels`, other layers their rows); `wl=None`: the target alone."""
        if target_kind != "cuda" or wl is None:
            return target_kind == "cuda"
        cout = wl.output_shape[3]
        if is_pointwise(wl.kernel_shape):
            return cout % GROUP == 0
        budget = staging_budget(self.name)
        return cout % GROUP == 0 and block_tiles(wl, layer_chunk(wl, budget), budget) is not None

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        return chunked_format(kernel, layer_chunk(wl, staging_budget(self.name)))

    def te(self, wl: ConvWorkload) -> list[te.Tensor]:
        return union_tf32_te(wl, self.round_at)

    def func_attrs(self, wl: ConvWorkload) -> dict:
        attrs = {WARP_FRAGMENTS_ATTR: 3}  # A, B and C fragments (tir_build lowers each)
        block = None if is_pointwise(wl.kernel_shape) else block_tiles(wl)
        if block is None:  # 1x1 layers; a KxK layer without one (the rule then declines it)
            return attrs
        (sh, sw), (eh, ew), (oh, ow) = wl.strides, wl.kernel_extent, wl.output_hw
        flat = whole_images(wl)
        pitch = image_pitch(wl) if flat else None
        return attrs | {BLOCK_ATTR: {"rows": block[0], "tiles": block[1], "stride_h": sh, "stride_w": sw,
                                     "extent_h": eh, "extent_w": ew, "chunk": wl.chunk,
                                     "image_h": oh, "image_w": ow if flat else 0,
                                     # (only where there is one: the other layers' modules, which
                                     # their tuning records name, stay as they were)
                                     **({IMAGE_PITCH_KEY: pitch} if pitch is not None else {}),
                                     **({IMAGE_PLANE_KEY: image_plane(wl, pitch)}
                                        if pitch is not None and (sh, sw) != (1, 1) else {})}}

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        return list(pack_union(wl, kernel))


ALGORITHM = UnionTF32()
