"""CUDA design spaces: register-tiled gathers over the ELL format.

A warp's threads take consecutive output columns of one row, so for every stored nonzero they read
consecutive addresses of the channel-major input (coalesced, mostly L1 hits: neighbouring
nonzeros of a channel read neighbouring input), while the nonzero's value and offset are the same
for the whole warp. Each thread keeps a register tile of `rows` output rows x `co_in` output
channels; the weights of 4 consecutive nonzeros arrive as one 16-byte vector (the ELL width is a
multiple of 4), so the weight stream costs a quarter of a load per nonzero and channel.

- `CUDAEllGather`: the weight vectors come straight from global memory (read-only cache).
- `CUDAEllSharedWeights`: the thread block's slice of values and offsets is first staged in shared
  memory by all its threads, and the vectors are read from there.
- `CUDAEllPixels`: as `CUDAEllSharedWeights`, but the threads of a warp take consecutive output
  pixels of the flattened (image, row, column) index rather than columns of one row: on a 7x7 map
  (ResNet-50's conv5) column-wise warps keep 7 of 32 lanes busy (ow=7 with 16 or 32 lanes per
  row), flattened ones 49 of 64. Lanes still read consecutive addresses within a row; a row
  boundary costs one more cache line.
- `CUDAEllSplitK`: for maps of up to 256 pixels, each output's nonzeros split into slices that
  separate warps sum (threadIdx.z), the partial sums added in shared memory: at batch 1 a 7x7 map
  has too few outputs to fill the GPU, and each warp's chain of ~460 dependent steps is the time.

Why no shared-memory tile of the input: MetaSchedule's analysis cannot bound a data-dependent
gather (`InverseAffineIterMap ... HasLowerBound`), and a tile of the whole input-channel halo does
not fit in 48 KB; the L1 cache (which shares its SRAM with shared memory) does that staging here.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import SparseConvBlocks, SparseConvRule, largest_divisor

VEC = 4  # = tvm_sparseconv.kernel.ELL_ALIGN
_THREADS_X = [16, 32, 64, 128]
_ROWS = [1, 2, 4]
_UNROLL = [0, 16, 64, 256]


def _schedule_relayout(sch: s_tir.Schedule, block) -> None:
    """The NHWC -> padded channel-major relayout: one thread per element."""
    fused = sch.fuse(*sch.get_loops(block))
    bx, tx = sch.split(fused, factors=[None, 256])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


class CUDAEllGather(SparseConvRule):
    """Columns across threads, rows x output channels in registers, weights as 16-byte vectors."""

    name = "cuda-ell-gather"
    target_kind = "cuda"
    stage_weights_in_shared = False

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, k = sch.get_loops(blocks.conv)
        n_ow, n_co, n_k = (sch.get(x).extent.value for x in (ow, co, k))
        if n_k % VEC:
            return None  # not an ELL width from SparseKernel (always a multiple of 4)
        acc = sch.cache_write(blocks.conv, 0, "local")

        if tunable:
            tx = sch.sample_categorical(_THREADS_X, [0.25] * 4)
            rows = sch.sample_categorical(_ROWS, [1 / 3] * 3)
            co_split = sch.sample_perfect_tile(co, n=3, max_innermost_factor=16)
            unroll = sch.sample_categorical(_UNROLL, [0.25] * 4)
        else:
            tx = 32 if n_ow <= 32 else 64
            rows, co_split, unroll = 2, [None, 1, largest_divisor(n_co, [8, 4, 2])], 16

        oh_o, oh_i = sch.split(oh, factors=[None, rows])
        ow_o, ow_t = sch.split(ow, factors=[None, tx])
        co_o, co_t, co_i = sch.split(co, factors=co_split)
        k_o, k_v = sch.split(k, factors=[None, VEC])
        sch.reorder(b, oh_o, ow_o, co_o, co_t, ow_t, k_o, k_v, oh_i, co_i)
        block_loop = sch.fuse(b, oh_o, ow_o, co_o)
        sch.bind(block_loop, "blockIdx.x")
        sch.bind(co_t, "threadIdx.y")
        sch.bind(ow_t, "threadIdx.x")

        self._registers(sch, blocks, acc, ow_t, block_loop, k_o, (co_split[1], tx), unroll, (k_v, oh_i, co_i))
        return sch

    def _registers(self, sch, blocks, acc, thread_loop, block_loop, k_o, threads, unroll, unrolled):
        """The thread's accumulator tile in registers (`acc`, the cache_write made before the loops
        were split: `with_cache_writes_first` says why), written back (epilogue inlined) under
        `thread_loop`; one 16-byte vector of values and one of offsets per `k_o` step; `unrolled`
        loops unrolled and `k_o` up to `unroll` deep; then the relayout's schedule."""
        sch.reverse_compute_at(acc, thread_loop, preserve_unit_loops=True)
        if blocks.epilogue is not None:
            self.attach_epilogue(sch, blocks)
        for name in ("values", "offsets"):
            src = self._stage_in_shared(sch, blocks.conv, name, block_loop, *threads)
            vector_reads(sch, src, (name,), k_o)

        for loop in unrolled:
            sch.unroll(loop)
        sch.annotate(k_o, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(k_o, "pragma_unroll_explicit", 1)
        sch.decompose_reduction(blocks.conv, k_o)
        _schedule_relayout(sch, blocks.x_stage)

    def _stage_in_shared(self, sch, conv, name, block_loop, threads_y, threads_x):
        """For the shared-weights variant: a block-wide copy; returns the block that reads `name`.

        `threads_y`/`threads_x` are the same factors (sampled variables when tuning) that size the
        thread block, so the copy keeps matching the block when the search mutates them.
        """
        if not self.stage_weights_in_shared:
            return conv
        shared = sch.cache_read(conv, _read_index(sch, conv, name), "shared")
        sch.compute_at(shared, block_loop, preserve_unit_loops=True)
        fused = sch.fuse(*sch.get_loops(shared)[1:])
        _, ty, tx, vec = sch.split(fused, factors=[None, threads_y, threads_x, VEC])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        return conv


def vector_reads(sch: s_tir.Schedule, block, names, k_o) -> None:
    """`block`'s reads of each of `names` (weight arrays) as one register vector per `k_o` step:
    the VEC nonzeros of that step in one 16-byte load."""
    for name in names:
        reg = sch.cache_read(block, _read_index(sch, block, name), "local")
        sch.compute_at(reg, k_o, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(reg)[-1])


def unrolled_nonzeros(sch: s_tir.Schedule, block, names, k_o, k_v, regs, unroll) -> None:
    """The loop over a thread's nonzeros: the weights as one vector per `k_o` step (`vector_reads`),
    the step's VEC nonzeros and the register channels `regs` unrolled, and up to `unroll` steps."""
    vector_reads(sch, block, names, k_o)
    sch.unroll(k_v)
    sch.unroll(regs)
    sch.annotate(k_o, "pragma_auto_unroll_max_step", unroll)
    sch.annotate(k_o, "pragma_unroll_explicit", 1)


def _read_index(sch: s_tir.Schedule, block, buffer_name: str) -> int:
    """Position of `buffer_name` among the block's read regions (what cache_read takes)."""
    names = [r.source.name for r in sch.get(block).reads]
    for i, n in enumerate(names):  # "values", or "values_shared" once staged
        if n == buffer_name or n.startswith(buffer_name + "_"):
            return i
    raise ValueError(f"block reads {names}, none is {buffer_name!r}")


class CUDAEllSharedWeights(CUDAEllGather):
    """As `CUDAEllGather`, with the block's values and offsets staged in shared memory first."""

    name = "cuda-ell-shared-weights"
    stage_weights_in_shared = True


_PIXEL_THREADS = [32, 64, 128, 256]
_PIXELS_PER_THREAD = [1, 2, 4]
_WEIGHT_BYTES = 24 * 1024


class CUDAEllPixels(CUDAEllSharedWeights):
    """Flattened output pixels across threads (whole warps on small maps), weights staged in shared."""

    name = "cuda-ell-pixels"

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, k = sch.get_loops(blocks.conv)
        n_b, n_oh, n_ow, n_co, n_k = (sch.get(x).extent.value for x in (b, oh, ow, co, k))
        if n_k % VEC:
            return None
        pixels = n_b * n_oh * n_ow
        acc = sch.cache_write(blocks.conv, 0, "local")

        if tunable:
            tx = sch.sample_categorical(_PIXEL_THREADS, [0.25] * 4)
            px = sch.sample_categorical(_PIXELS_PER_THREAD, [1 / 3] * 3)
            co_split = sch.sample_perfect_tile(co, n=3, max_innermost_factor=16)
            unroll = sch.sample_categorical(_UNROLL, [0.25] * 4)
        else:
            tx = 32 if pixels <= 64 else 64
            co_i = largest_divisor(n_co, [8, 4, 2])
            # Channel threads so that a small map still makes a block of >= 128 threads, as long as
            # the block's weights (values and offsets) stay within half the 48 KB of shared memory.
            fits = [d for d in (4, 2) if d * tx <= 256 and d * co_i * n_k * 8 <= _WEIGHT_BYTES]
            co_t = largest_divisor(n_co // co_i, fits)
            px, co_split, unroll = 1, [None, co_t, co_i], 16

        # A thread's pixels are consecutive (register loop innermost): a strided set would make
        # its accumulators' write-back the bounding box (see cuda_nhwc_direct). The last block's
        # pixels past the map are predicated off, in the write-back too (its cache_write comes
        # first: made after the split, it stored them past the output, `with_cache_writes_first`).
        p = sch.fuse(b, oh, ow)
        p_o, p_t, p_r = sch.split(p, factors=[None, tx, px])
        co_o, co_t, co_i = sch.split(co, factors=co_split)
        k_o, k_v = sch.split(k, factors=[None, VEC])
        sch.reorder(p_o, co_o, co_t, p_t, k_o, k_v, p_r, co_i)
        block_loop = sch.fuse(p_o, co_o)
        sch.bind(block_loop, "blockIdx.x")
        sch.bind(co_t, "threadIdx.y")
        sch.bind(p_t, "threadIdx.x")

        self._registers(sch, blocks, acc, p_t, block_loop, k_o, (co_split[1], tx), unroll, (k_v, p_r, co_i))
        return sch


_SPLIT_K = [1, 2, 4, 8, 16]  # 1: layers whose few nonzeros per channel do not split
_SPLIT_K_THREADS = [32, 64, 128]


class CUDAEllSplitK(CUDAEllGather):
    """Each output's nonzeros split into `k_split` slices, summed by as many warps (threadIdx.z)
    whose partial sums meet in shared memory; a block takes one whole image (maps up to 256 pixels).

    A small map at batch 1 has too few outputs for the GPU: ResNet-50's conv5 3x3 (7x7x512) ran
    as 512 one-warp blocks with 6% of the warp slots busy, each warp working through its ~460
    nonzeros one dependent step after another (ncu: 2.8 M instructions; 24 us in the benchmark). Slicing the
    nonzeros multiplies the warps and divides that chain.
    """

    name = "cuda-ell-splitk"

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, k = sch.get_loops(blocks.conv)
        n_oh, n_ow, n_co, n_k = (sch.get(x).extent.value for x in (oh, ow, co, k))
        # A block takes a whole image: the last warp's pixels past the tile then fall off the map
        # (masked), where tiles of a few rows let them spill into the next tile's rows (TVM drops
        # the split's predicate from the write-backs: the GPU fuzz test caught that).
        if n_k % VEC or n_oh * n_ow > 256:
            return None
        slices = [s for s in _SPLIT_K if (n_k // VEC) % s == 0]

        if tunable:
            tx = sch.sample_categorical(_SPLIT_K_THREADS, [1 / 3] * 3)
            ks = sch.sample_categorical(slices, [1 / len(slices)] * len(slices))
            co_split = sch.sample_perfect_tile(co, n=3, max_innermost_factor=8)
            unroll = sch.sample_categorical(_UNROLL, [0.25] * 4)
        else:
            tx = 32 if n_oh * n_ow <= 32 else 64
            ks = max(s for s in slices if s * tx <= 512)
            co_split, unroll = [None, 1, largest_divisor(n_co, [4, 2])], 16

        # The sum over slices keeps the original loops (rfactor copies them for the partials):
        # a block per (image, channel slice), threads over its outputs.
        k_s, _ = sch.split(k, factors=[ks, None])
        # A unit outer row loop: the schedule the GPU tests and the committed records ran (without
        # it TVM generates different CUDA, untested on a GPU).
        oh_o, oh_i = sch.split(oh, factors=[None, n_oh])
        co_o, co_t, co_i = sch.split(co, factors=co_split)
        sch.reorder(b, oh_o, co_o, k_s, oh_i, ow, co_t, co_i)
        partial = sch.rfactor(k_s, factor_axis=0)  # partial[slice, n, oh, ow, co]
        sch.set_scope(partial, 0, "shared")
        # both register tiles' cache_writes before their loops are fused and split (made after,
        # their write-backs stored past the map: `with_cache_writes_first`)
        total = sch.cache_write(blocks.conv, 0, "local")
        block_loop = sch.fuse(b, oh_o, co_o)
        sch.bind(block_loop, "blockIdx.x")
        sch.reorder(oh_i, ow, co_t, co_i, k_s)
        out_threads = sch.fuse(oh_i, ow, co_t, co_i)
        _, sz, sy, sx = sch.split(out_threads, factors=[None, ks, co_split[1], tx])
        sch.bind(sz, "threadIdx.z")
        sch.bind(sy, "threadIdx.y")
        sch.bind(sx, "threadIdx.x")
        sch.reverse_compute_at(total, sx, preserve_unit_loops=True)
        if blocks.epilogue is not None:
            self.attach_epilogue(sch, blocks)

        # The partials of the block's tile (exactly its rows: no halo), one slice per threadIdx.z.
        # A thread's pixels step by `tx` in a loop outside the thread loops, so that its
        # accumulators cover one pixel at a time (never a strided set; see cuda_nhwc_direct).
        sch.compute_at(partial, block_loop, preserve_unit_loops=True)
        acc = sch.cache_write(partial, 0, "local")
        p_ks, p_b, p_oh, p_ow, p_co, p_k = sch.get_loops(partial)[-6:]
        px = sch.fuse(p_b, p_oh, p_ow)
        px_o, px_t = sch.split(px, factors=[None, tx])
        pc_t, pc_i = sch.split(p_co, factors=[co_split[1], None])
        k_o, k_v = sch.split(p_k, factors=[None, VEC])
        sch.reorder(px_o, p_ks, pc_t, px_t, k_o, k_v, pc_i)
        sch.bind(p_ks, "threadIdx.z")
        sch.bind(pc_t, "threadIdx.y")
        sch.bind(px_t, "threadIdx.x")
        sch.reverse_compute_at(acc, px_t, preserve_unit_loops=True)
        unrolled_nonzeros(sch, partial, ("values", "offsets"), k_o, k_v, pc_i, unroll)
        sch.decompose_reduction(partial, k_o)
        _schedule_relayout(sch, blocks.x_stage)
        return sch
