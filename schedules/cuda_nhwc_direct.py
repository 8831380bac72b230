"""CUDA design space of the "nhwc-direct" algorithm: pixel tiles staged from NHWC in shared memory.

A thread block takes a tile of output pixels (images x rows x columns) and a slice of output
channels. For each chunk of input channels it copies the tile's input halo x chunk from the NHWC
input into shared memory (consecutive threads read consecutive channels: coalesced; TensorFlow's
padding is the copy's bounds check, so there is no padded copy in device memory), then every
thread gathers from shared memory for its own pixels. Threads run across the tile's flattened
pixels, so a 7x7 map or a batch of small maps fills whole warps, and across output channels; each
keeps a box of pixels x `co_i` output channels of accumulators in registers, and the weights of 4
consecutive nonzeros of a channel arrive as one 16-byte vector of values and one of taps.
Each pixel's channel row in shared memory is padded by one word, so that the lanes of a warp,
reading the same channel of consecutive pixels, hit distinct banks.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from tvm_sparseconv.algorithms.nhwc_direct import TILE_ATTR as ATTR

from .common import SparseConvBlocks, SparseConvRule, largest_divisor
from .cuda_gather import _read_index, unrolled_nonzeros, vector_reads

VEC = 4  # = tvm_sparseconv.kernel.ELL_ALIGN
_UNROLL = [0, 16, 64, 256]
_SHARED_BYTES = 48 * 1024


def _halo_bytes(tile: tuple[int, int, int], wl_dims: dict) -> int:
    tn, th, tw = tile
    rows = (th - 1) * wl_dims["sh"] + wl_dims["eh"]
    cols = (tw - 1) * wl_dims["sw"] + wl_dims["ew"]
    return tn * rows * cols * (wl_dims["chunk"] + 1) * 4


def _divisors(x: int) -> list[int]:
    return [d for d in range(1, x + 1) if x % d == 0]


def _largest_divisor_below(x: int, bound: int) -> int:
    """The largest divisor of `x` smaller than `bound` (> 1): the next smaller tile side."""
    return max(d for d in _divisors(x) if d < bound)


def default_tile(n: int, oh: int, ow: int, dims: dict, target_px: int = 128) -> tuple[int, int, int]:
    """Untuned tile (images, rows, columns): whole rows where they are short, ~128 pixels, in 48 KB."""
    tw = max(d for d in _divisors(ow) if d <= 64)
    th = max(d for d in _divisors(oh) if d * tw <= target_px)
    tn = max(d for d in _divisors(n) if d * th * tw <= target_px)
    while _halo_bytes((tn, th, tw), dims) > _SHARED_BYTES // 2 and tn * th * tw > 1:
        if tn > 1:
            tn = _largest_divisor_below(n, tn)
        elif th > 1:
            th = _largest_divisor_below(oh, th)
        else:
            tw = _largest_divisor_below(ow, tw)
    return tn, th, tw


def max_tile(n: int, oh: int, ow: int, dims: dict) -> tuple[int, int, int]:
    """The largest tile (images, rows, columns) tuning may draw: divisors of the map (up to 8 images,
    16 rows, 64 columns) shrunk, largest first, until its input halo fits in shared memory."""
    tile = [max(d for d in _divisors(e) if d <= lim) for e, lim in zip((n, oh, ow), (8, 16, 64))]
    while _halo_bytes(tuple(tile), dims) > _SHARED_BYTES and max(tile) > 1:
        i = max(range(3), key=lambda j: tile[j])
        tile[i] = _largest_divisor_below((n, oh, ow)[i], tile[i])
    return tuple(tile)


class CUDANhwcDirect(SparseConvRule):
    """Flattened pixel tiles across threads, output channels in registers, input chunks in shared memory."""

    name = "cuda-nhwc-direct"
    target_kind = "cuda"
    algorithm = "nhwc-direct"

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, c, k = sch.get_loops(blocks.conv)
        n_b, n_oh, n_ow, n_co, n_k = (sch.get(x).extent.value for x in (b, oh, ow, co, k))
        if n_k % VEC:
            return None
        dims = _dims(sch, blocks)

        block_parts = []
        if tunable:
            # Each image/row/column loop splits into (block, thread, register) factors, within a
            # largest tile whose input fits in shared memory: drawn from whole maps, nearly every
            # tile of a batch-32 layer overflowed it and was rejected after building.
            cap = max_tile(n_b, n_oh, n_ow, dims)
            splits = []
            for loop, extent, limit, inner in zip((b, oh, ow), (n_b, n_oh, n_ow), cap, (8, 16, 64)):
                outer, loop = sch.split(loop, factors=[extent // limit, limit])
                block_parts.append(outer)
                splits.append((loop, sch.sample_perfect_tile(loop, n=3, max_innermost_factor=inner)))
            (b, tile_n), (oh, tile_h), (ow, tile_w) = splits
            co_split = sch.sample_perfect_tile(co, n=3, max_innermost_factor=8)
            unroll = sch.sample_categorical(_UNROLL, [0.25] * 4)
        else:
            tn, th, tw = default_tile(n_b, n_oh, n_ow, dims, target_px=64)
            # Threads over every pixel of the tile (no register pixels): whole warps on small maps.
            tile_n, tile_h, tile_w = [None, tn, 1], [None, th, 1], [None, tw, 1]
            co_i = largest_divisor(n_co, [4, 2])
            # Many output channels per block: each staged input tile then serves them all.
            co_t = largest_divisor(n_co // co_i, [d for d in (32, 16, 8, 4, 2) if d * tn * th * tw <= 512])
            co_split, unroll = [None, co_t, co_i], 16

        # A thread's pixels (and channels) are a contiguous box, register loops innermost. A
        # thread loop inside a register loop would give each thread a strided set, whose bounding
        # box TVM takes for the accumulators' write-back: threads would then store their
        # uninitialised registers over their neighbours' pixels (a race that tuning once found).
        b_o, b_t, b_r = sch.split(b, factors=tile_n)
        oh_o, oh_t, oh_r = sch.split(oh, factors=tile_h)
        ow_o, ow_t, ow_r = sch.split(ow, factors=tile_w)
        co_o, co_t, co_i = sch.split(co, factors=co_split)
        k_o, k_v = sch.split(k, factors=[None, VEC])
        sch.reorder(*block_parts, b_o, oh_o, ow_o, co_o, co_t, b_t, oh_t, ow_t, c, k_o, k_v, b_r, oh_r, ow_r, co_i)
        block_loop = sch.fuse(*block_parts, b_o, oh_o, ow_o, co_o)
        px_t = sch.fuse(b_t, oh_t, ow_t)
        sch.bind(block_loop, "blockIdx.x")
        sch.bind(co_t, "threadIdx.y")
        sch.bind(px_t, "threadIdx.x")

        acc = sch.cache_write(blocks.conv, 0, "local")
        sch.reverse_compute_at(acc, px_t, preserve_unit_loops=True)
        if blocks.epilogue is not None:
            self.attach_epilogue(sch, blocks)

        # The tile's input chunk: NHWC -> shared, padding inlined as the copy's bounds check.
        x_shared = sch.cache_read(blocks.conv, _read_index(sch, blocks.conv, "x_pad"), "shared")
        sch.compute_at(x_shared, c, preserve_unit_loops=True)
        sch.compute_inline(blocks.x_stage)
        if dims["chunk"] >= 4:
            sch.storage_align(x_shared, 0, axis=2, factor=dims["chunk"], offset=1)
        copy = sch.fuse(*sch.get_loops(x_shared)[-4:])
        _, cty, *ctx = sch.split(copy, factors=[None, co_split[1], tile_n[1], tile_h[1], tile_w[1]])
        sch.bind(cty, "threadIdx.y")
        sch.bind(sch.fuse(*ctx), "threadIdx.x")

        vector_reads(sch, blocks.conv, ("values", "taps"), k_o)

        for loop in (k_v, b_r, oh_r, ow_r, co_i):
            sch.unroll(loop)
        sch.annotate(k_o, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(k_o, "pragma_unroll_explicit", 1)
        sch.decompose_reduction(blocks.conv, c)
        return sch


def _dims(sch: s_tir.Schedule, blocks: SparseConvBlocks) -> dict:
    """Strides, dilated kernel extent and chunk: the function attribute the algorithm sets."""
    attrs = sch.mod["main"].attrs
    if attrs is None or ATTR not in attrs:
        raise ValueError(f"nhwc-direct compute without its {ATTR!r} attribute")
    return {k: int(v) for k, v in attrs[ATTR].items()}


_SLICES = [1, 2, 4, 8, 16]
_MAX_SLICES = 16


class CUDANhwcSplitK(CUDANhwcDirect):
    """nhwc-direct with each output's nonzeros in slices summed by as many thread groups
    (threadIdx.z, a cross-thread reduction): `kc` adjacent input chunks staged at once, one per
    chunk slice, each chunk's nonzeros optionally split further.

    At batch 1 the maps are small: ResNet-50's conv5 1x1 reduction (7x7, 2048 -> 512) ran as 224
    blocks of 4 warps, each thread working through 16 chunks one after another (copy, barrier,
    ~28 dependent steps) for 19 us in device time, where the work is ~10 MFLOP. Slicing the
    reduction multiplies the warps and divides the chain; the tile's input is read once per block
    all the same. Measured (H200, 32 trials): 19.0 -> 14.3 us there, no gain on layers with fewer
    chunks (`benchmarks/experiments/batch1_device_time.md`).
    """

    name = "cuda-nhwc-splitk"

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, c, k = sch.get_loops(blocks.conv)
        n_b, n_oh, n_ow, n_co, n_c, n_k = (sch.get(x).extent.value for x in (b, oh, ow, co, c, k))
        if n_k % VEC:
            return None
        dims = _dims(sch, blocks)
        c_slices = [d for d in (1, 2, 4, 8) if n_c % d == 0]
        k_slices = [s for s in _SLICES if (n_k // VEC) % s == 0]

        if tunable:
            # Tiles up to the largest that fits one chunk; more chunks at once (kc) need smaller
            # ones, and candidates whose tile x kc overflows shared memory are rejected when built.
            cap = max_tile(n_b, n_oh, n_ow, dims)
            block_parts, tiles = [], []
            for loop, extent, limit in zip((b, oh, ow), (n_b, n_oh, n_ow), cap):
                outer, loop = sch.split(loop, factors=[extent // limit, limit])
                block_parts.append(outer)
                tiles.append((loop, sch.sample_perfect_tile(loop, n=2, max_innermost_factor=64)))
            (b, tile_n), (oh, tile_h), (ow, tile_w) = tiles
            kc = sch.sample_categorical(c_slices, [1 / len(c_slices)] * len(c_slices))
            kk = sch.sample_categorical(k_slices, [1 / len(k_slices)] * len(k_slices))
            co_split = sch.sample_perfect_tile(co, n=3, max_innermost_factor=8)
            unroll = sch.sample_categorical(_UNROLL, [0.25] * 4)
        else:
            # nhwc-direct's tile of ~64 pixels, with as many chunks at once as fit beside it.
            block_parts = []
            tn, th, tw = default_tile(n_b, n_oh, n_ow, dims, target_px=64)
            tile_n, tile_h, tile_w = [None, tn], [None, th], [None, tw]
            n_px = tn * th * tw
            kc = max(d for d in c_slices if _halo_bytes((tn, th, tw), dims) * d <= _SHARED_BYTES and d * n_px <= 512)
            kk = max(s for s in k_slices if s * kc * n_px <= 512 and s * kc <= _MAX_SLICES)
            regs = largest_divisor(n_co, [4, 2])
            threads = largest_divisor(n_co // regs, [d for d in (16, 8, 4, 2) if d * kk * kc * n_px <= 512])
            co_split, unroll = [None, threads, regs], 16
        b_o, b_i = sch.split(b, factors=tile_n)
        oh_o, oh_i = sch.split(oh, factors=tile_h)
        ow_o, ow_i = sch.split(ow, factors=tile_w)
        co_o, co_t, co_i = sch.split(co, factors=co_split)
        # Slices over adjacent chunks (c_s inner), so the chunks staged at once are one box.
        c_o, c_s = sch.split(c, factors=[None, kc])
        k_s, k_r = sch.split(k, factors=[kk, None])
        sch.reorder(*block_parts, b_o, oh_o, ow_o, co_o, co_t, b_i, oh_i, ow_i, k_s, c_s, co_i, c_o, k_r)
        slices = sch.fuse(k_s, c_s)
        sch.fuse(*block_parts, b_o, oh_o, ow_o, co_o)
        sch.fuse(b_i, oh_i, ow_i)  # the block's and the thread's pixels, each one loop for rfactor to copy
        # Each thread's partial sums stay in its registers; the sum over slices (the original
        # block, its reduction loop bound to threadIdx.z) becomes a cross-thread reduction.
        partial = sch.rfactor(slices, factor_axis=0)
        sch.set_scope(partial, 0, "local")
        # rfactor left the original loops with the sum over slices; the partials have their own.
        block_loop, p_ct, p_px, p_sl, p_co_i, p_c, p_k = sch.get_loops(partial)
        sch.bind(block_loop, "blockIdx.x")
        sch.bind(p_ct, "threadIdx.y")
        sch.bind(p_px, "threadIdx.x")
        sch.bind(p_sl, "threadIdx.z")
        k_o, k_v = sch.split(p_k, factors=[None, VEC])
        sch.reorder(p_c, k_o, k_v, p_co_i)

        # The sum over slices, under the same threads: a thread's outputs, its slice on z.
        sch.reverse_compute_at(blocks.conv, block_loop, preserve_unit_loops=True)
        w_sl, *w_px, w_co = sch.get_loops(blocks.conv)[-5:]
        w_ct, w_ci = sch.split(w_co, factors=[co_split[1], None])
        w_px = sch.fuse(*w_px)
        sch.reorder(w_ct, w_px, w_ci, w_sl)
        sch.bind(w_ct, "threadIdx.y")
        sch.bind(w_px, "threadIdx.x")
        sch.bind(w_sl, "threadIdx.z")
        if blocks.epilogue is not None:
            self.attach_epilogue(sch, blocks)

        # kc chunks of the tile's input, NHWC -> shared, padding inlined as the copy's bounds check.
        x_shared = sch.cache_read(partial, _read_index(sch, partial, "x_pad"), "shared")
        sch.compute_at(x_shared, p_c, preserve_unit_loops=True)
        sch.compute_inline(blocks.x_stage)
        if dims["chunk"] >= 4:
            sch.storage_align(x_shared, 0, axis=2, factor=dims["chunk"], offset=1)
        # Thread extents as split factors (z: slices, y: channels, x: pixels). Each is one sampled
        # variable or a constant: a product of sampled ones would not serialise into a trace.
        _, zk, zc, ty, *tx = sch.split(sch.fuse(*sch.get_loops(x_shared)[-4:]),
                                       factors=[None, kk, kc, co_split[1], tile_n[1], tile_h[1], tile_w[1]])
        sch.bind(sch.fuse(zk, zc), "threadIdx.z")
        sch.bind(ty, "threadIdx.y")
        sch.bind(sch.fuse(*tx), "threadIdx.x")

        unrolled_nonzeros(sch, partial, ("values", "taps"), k_o, k_v, p_co_i, unroll)
        sch.decompose_reduction(partial, p_c)
        return sch

    def attach_epilogue(self, sch: s_tir.Schedule, blocks: SparseConvBlocks) -> None:
        """The sum over slices is a cross-thread reduction, into which nothing can be inlined: it
        lands in every z thread's registers, and the epilogue, over the block's outputs with the
        sum's channel and pixel threads, writes it (the same value from each z thread, as dlight's
        GEMV epilogue does)."""
        loops = sch.get_loops(blocks.conv)
        co_threads = next(sch.get(x).extent for x in loops if _thread_tag(sch, x) == "threadIdx.y")
        sch.set_scope(blocks.conv, 0, "local")
        sch.reverse_compute_at(blocks.epilogue, loops[0], preserve_unit_loops=True)
        *e_px, e_co = sch.get_loops(blocks.epilogue)[-4:]
        e_ct, _ = sch.split(e_co, factors=[co_threads, None])
        e_px = sch.fuse(*e_px)
        sch.reorder(e_ct, e_px)
        sch.bind(e_ct, "threadIdx.y")
        sch.bind(e_px, "threadIdx.x")


def _thread_tag(sch: s_tir.Schedule, loop) -> str | None:
    binding = sch.get(loop).thread_binding
    return None if binding is None else binding.thread_tag
