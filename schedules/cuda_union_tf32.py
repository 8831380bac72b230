"""CUDA design space of the "union-tf32" algorithm: TF32 mma.sync over each channel group's union of taps.

A warp owns `m_tiles` x 16 flattened output pixels and `g_regs` groups of 8 output channels, i.e.
m_tiles x g_regs accumulator fragments (4 registers per lane each). For each step of 8 union taps
it gathers its A fragments (each lane its own 4 input values per tile) and its B fragments (2
weights per lane and group, stored in fragment order), then issues one `mma.m16n8k8` per (tile,
group). A block holds `warps_p` x `warps_g` warps and first copies, per chunk of input channels,
its input (rounded to TF32) into shared memory, once for all its groups; the fragments gather
from there (each staged position padded to 4 mod 8 words: with the algorithm's bank-spread union
order of 1x1 layers, a fragment load hits 32 distinct banks). 1x1 layers: a block is consecutive
tiles of flattened pixels, staged as those pixels. Other layers: a block is a box of rows x column
tiles of the algorithm's pixel grid, staged as the box of input it reads (TVM bounds a range of
flattened pixels that crosses rows only by the whole image), copied in float4s where Cin allows;
its warps go over the rows, its column tiles and the groups, a warp holding one or more of the
box's rows and column tiles (each lane's taps, offsets in the staged box, serve all of them).
(Until stop 41 these gathered from the NHWC input through L1, each group re-reading it: 320 us
on conv4 3x3 at batch 32, `benchmarks/experiments/union_tf32.md`.) The k-step loop and the
staging copy unroll or not as the tuner draws (`K_UNROLL`, `COPY_UNROLL`).

Layers short of warps may split the chunks in shares, each share's partial sums a grid of blocks
(`REDUCTION_SLICES`): summed by a second kernel from global memory, or (`reduction_in_cluster`,
sm_90) in the same kernel by the tile's thread-block cluster of shares over distributed shared
memory (`_cluster_reduction`, with the build step `cluster_sums`). ncu put the second kernel at
3.1-3.6 us, 25-31% of a split batch-1 layer (stop 58).
"""

from __future__ import annotations

import copy
import itertools
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import _ffi_api as schedule_ffi
from tvm.target import Target
from tvm.tirx.function import IndexMap

from tvm_sparseconv.algorithms.union_tf32 import (A_TF32, BLOCK_ATTR, GROUP, K_STEP, M_TILE, STAGE_ALIGN, X_TF32,
                                                   block_pitch, gather_region, staged_row_words, staging_budget,
                                                   tallest_block_rows)
from tvm_sparseconv.tir_build import SKIP_STEPS_ATTR

from . import mma_tf32 as mma
from .common import SparseConvBlocks, SparseConvRule, largest_divisor
from .cuda_gather import _read_index


#: `pragma_auto_unroll_max_step` choices for the k-step loop (sampled when tuning): 0 keeps it a
#: loop; 512 unrolls the whole chunk's k steps, so nvcc can issue the next steps' tap and weight
#: loads before this step's mma (ncu's top stall on conv4 3x3 was `long_sb`, waiting on them) at
#: the cost of registers (conv2 3x3 b32 g8 untuned: 96 -> 166 per thread)
K_UNROLL = (0, 512)
#: most groups a block that a KxK layer's untuned variants try (`untuned_kxk_group_cap`): 16, or 8
#: for twice the blocks (each staging the same box: twice the bytes staged)
KXK_GROUP_CAPS = (16, 8)
#: shares of the chunks that the untuned variants also try (`reduction_slices`), each with both
#: k-step unrolls and the template's other choices. H100 b32 g8 (stop 49, tuning's candidates in
#: turns): they win where the grid is smallest (conv5 3x3 s2 whole images, 128 blocks: 61.3 ->
#: 50.2 us with 2 shares) and lose elsewhere (conv4 3x3 30.4 -> 35.5; 1x1 reduce first 28.2 -> 53.7).
#: Tuning also searches each as a design space of its own (`design_variants`): on
#: the H100's batch-1 1x1 layers (stop 54, 16 trials) an untuned split beat the search of unsplit
#: designs on conv5 1x1 proj s2 (13.1 against 14.4 us), while elsewhere the searched choices
#: mattered more than the split (conv5 1x1 reduce_first: 10.5 searched, 21.4 the best untuned split)
REDUCTION_SLICES = (2, 4)
#: the same for the staging copy's steps (each thread's float4s of a chunk): unrolled, nvcc issues
#: all their global loads before the first shared store (conv2 3x3 b32 g8: 16 -> 5.6 instructions
#: per staged float, 96 -> 127 registers)
COPY_UNROLL = (0, 64)
#: (k-step unroll, copy unroll) of the untuned variants whose KxK blocks hold the tallest box of
#: rows that fits (`untuned_tall_blocks`), each with one and the template's groups a warp and each
#: of `KXK_GROUP_CAPS`: the unrolls of the KxK records that won on the H100 (stop 50: conv4 3x3
#: b32 g8, 29.8 us)
TALL_BLOCK_UNROLLS = (512, 64)


class CUDAUnionTF32(SparseConvRule):
    """Warps of 16-pixel x 8-channel TF32 mma tiles; 1x1 layers stage each input chunk in shared memory."""

    name = "cuda-union-tf32"
    target_kind = "cuda"
    algorithm = "union-tf32"
    #: the untuned template's k-step unroll (`K_UNROLL`)
    untuned_k_unroll = 0
    #: the untuned template's staging-copy unroll (`COPY_UNROLL`)
    untuned_copy_unroll = 0
    #: groups of 8 channels a warp of the untuned template holds (the block's other groups go to
    #: more warps), for (KxK, 1x1) layers. KxK 2: the 4 of stop 43 left too few warps to hide
    #: latency (ncu: 21% occupancy on conv4 3x3); with 2, H100 b32 g8: conv4 3x3 34.4 us against
    #: 37.2, conv2 3x3 37.9 against 47.5 (the same designs drawn as samples in
    #: union_tf32-v8-nvidia-h100.json). 1x1: 4, not measured against 2 as an untuned template
    untuned_group_regs = (2, 4)
    #: most groups of 8 channels a block of the untuned template holds (each block stages its
    #: pixels' input once for them all: a layer's input is read groups / group_cap times, from L2).
    #: None: `untuned_kxk_group_cap` on KxK layers; on 1x1 layers the most of 64, 32, 16 that leaves
    #: `untuned_min_blocks` blocks (H100 b32 g8, sync copy, untuned, against 16: conv5 1x1 expand
    #: at 32 15.7 us against 18.3, conv4 1x1 expand at 64 17.6 against 21.5; conv4 and conv5 1x1
    #: reduce, whose fewer groups at 32 leave half the blocks, ran slower there: 19.9 against
    #: 18.5, 29.8 against 26.8; union_tf32_async_copy-v3-1x1-stages-groups-nvidia-h100.json)
    group_cap: int | None = None
    #: most groups a block of a KxK layer's untuned template when `group_cap` is None. Its
    #: untuned variants also try `KXK_GROUP_CAPS`' other, for twice the blocks: the KxK layers
    #: still slower than cuDNN TF32 on the H100 run under one wave (conv4 3x3 b32 g8 448 blocks,
    #: 0.68 waves; conv5 3x3 128 blocks, 0.97; union_staging_traffic-nvidia-h100-stop48.json)
    untuned_kxk_group_cap = 16
    #: blocks a 1x1 layer's untuned grid keeps when `group_cap` is None (about 3 per SM of an
    #: H100's 132; the measured caps above left 392)
    untuned_min_blocks = 384
    #: the same when tuning (the sampled warps x groups a warp of a block stay within it). The
    #: stop-45 H100 records, drawn within 16, stage 2-16x the input their 1x1 layers read, and
    #: those layers' times follow the staged bytes (51 MB: 22-30 us, 104 MB: 28-43 us;
    #: benchmarks/experiments/union_staging_traffic-nvidia-h100-stop45.json); 64 keeps 16 and
    #: below reachable (more blocks) and lets a block hold a 1x1 layer's groups in one pass
    tuned_group_cap = 64
    #: shares the input chunks are split into, each share's partial sums a grid of blocks of its
    #: own (`_split_reduction`): more warps for layers whose grid is short of them (on the H100
    #: the union layers still slower than cuDNN TF32 run under one wave or at 15-27 warps an SM,
    #: each warp through all 8-16 chunks; union_staging_traffic-nvidia-h100-stop48.json). 1: none
    reduction_slices = 1
    #: how a split reduction's shares meet: False, a second kernel sums them from global memory
    #: into the epilogue; True, the S blocks of a tile are one thread-block cluster (sm_90) that
    #: sums them over distributed shared memory in the same kernel (`_cluster_reduction`)
    reduction_in_cluster = False
    #: KxK layers: a block holds the most grid rows whose staged box fits (`tallest_block_rows`)
    #: rather than the format's (`block_tiles`, which prefers an even tile count so that a warp
    #: holds two), and a warp all of the block's tiles (a lane's taps serve them all): conv4 3x3's
    #: 7 rows of 14 a block stage 36% fewer bytes a pixel than its 2; untuned only
    untuned_tall_blocks = False
    #: 1x1 layers: each chunk's taps staged in shared memory with its input, and its weights' B
    #: fragments loaded once a chunk, not a k step: ncu on conv5 1x1 reduce b32 g8's H100 record
    #: (stop 51) found 45% of its warps' stalls waiting on the taps and weights each k step loads
    #: from global memory (the tap's clamp and the mma, `long_sb`); untuned only
    untuned_chunk_operands = False

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        *pixels, co, c, k = sch.get_loops(blocks.conv)
        n_co, n_k = (sch.get(x).extent.value for x in (co, k))
        if n_co % GROUP or n_k % K_STEP or sch.get(pixels[-1]).extent.value % M_TILE:
            return None
        shares = []  # a split reduction's shares of the chunks: blocks of their own
        if self.reduction_slices > 1:
            if sch.get(c).extent.value % self.reduction_slices:
                return None
            split = self._split_reduction(sch, blocks, c, self.reduction_slices, self.reduction_in_cluster)
            blocks, shares, pixels, co, c, k, sum_blocks = split
        tiled = (self._tile_pixels if len(pixels) == 1 else self._tile_rows)(sch, blocks, pixels, co, c, k, tunable,
                                                                              shares)
        if tiled is None:
            return None
        warp, k_o, p_i, copy_warps = tiled
        if shares and self.reduction_in_cluster and not tunable:
            # a cluster's partial sums are each block's whole tile in shared memory (tuning's
            # draws: MetaSchedule's GPU check rejects those over the device's limit)
            partial = sch.get(blocks.conv).writes[0].source
            tiles = sch.get(sch.get_loops(blocks.conv)[0]).extent.value
            if 4 * math.prod(int(d) for d in partial.shape) // tiles > self.tile_budget():
                return None
        a_block = sch.get_sblock(A_TF32)
        if len(pixels) > 1:  # KxK: the taps are offsets TVM cannot bound; their region is declared
            _declare_read_region(sch, a_block, _read_index(sch, a_block, X_TF32),
                                 gather_region(sch.mod["main"].attrs[BLOCK_ATTR]))

        # Accumulators: warp fragments, stored (through the NHWC epilogue) after the reduction.
        acc = sch.cache_write(blocks.conv, 0, "warp")
        sch.reverse_compute_at(acc, warp, preserve_unit_loops=True)
        pitch = _staged_pitch(sch)
        if pitch is not None and blocks.epilogue is not None:
            # a whole image at its staged pitch (`union_tf32.image_pitch`): the epilogue's
            # oh * pitch + ow is no bijection TVM can inline; as (row, column) it is
            sch.transform_layout(acc, ("write", 0), lambda b, r, q, co: (b, r + q // pitch, q % pitch, co),
                                 assume_injective_transform=True)
        if blocks.epilogue is not None:  # (none in a split reduction's partial sums)
            self.attach_epilogue(sch, blocks)
        elif self.reduction_in_cluster:
            _cluster_reduction(sch, blocks.conv, *sum_blocks, self.reduction_slices, copy_warps)

        # A fragments: the gather itself, computed per k step into registers, from the block's
        # pixels x one chunk staged in shared memory once for all its groups (consecutive threads
        # read consecutive channels; each staged position padded to 4 mod 8 words against bank
        # conflicts).
        sch.compute_at(a_block, k_o, preserve_unit_loops=True)
        x_shared = sch.cache_read(a_block, _read_index(sch, a_block, X_TF32), "shared")
        sch.compute_at(x_shared, c, preserve_unit_loops=True)
        sch.compute_inline(blocks.x_stage)
        positions = len(sch.get(x_shared).writes[0].source.shape) - 1  # the axis before the channels
        sch.storage_align(x_shared, 0, axis=positions - 1, factor=STAGE_ALIGN[0], offset=STAGE_ALIGN[1])
        # KxK: a position's channels copy as float4 (16-byte aligned where Cin and the chunk are
        # multiples of 4: interop aligns inputs to 64 bytes): 30 -> 12.5 instructions per staged
        # float on conv3 3x3 stride 2 (benchmarks/experiments/union_sass.py)
        cin = next(int(r.source.shape[-1]) for r in sch.get(x_shared).reads if r.source.name == "x")
        chunk_words = int(sch.get(x_shared).writes[0].source.shape[-1])
        *box, ch = sch.get_loops(x_shared)[-positions - 1:]
        if cin % 4 == 0 and chunk_words % 4 == 0:
            ch, vec = sch.split(ch, factors=[None, 4])
            sch.vectorize(vec)
        copy = sch.fuse(*box, ch)
        # (the warp count is a product of sampled factors, which would not serialise into the
        # tuning record's trace, so the copy splits by each of them)
        copy_steps, *warps, ctx = sch.split(copy, factors=[None, *copy_warps, 32])
        self._unroll(sch, copy_steps, COPY_UNROLL, self.untuned_copy_unroll, tunable)
        sch.bind(sch.fuse(*warps), "threadIdx.y")
        sch.bind(ctx, "threadIdx.x")
        sch.set_scope(a_block, 0, "warp")
        b_frag = sch.cache_read(blocks.conv, _read_index(sch, blocks.conv, "weights"), "warp")
        ahead = self.untuned_chunk_operands and not tunable and len(pixels) == 1
        sch.compute_at(b_frag, c if ahead else k_o, preserve_unit_loops=True)
        if ahead:  # the chunk's taps staged beside its input (one barrier for both)
            taps_shared = sch.cache_read(a_block, _read_index(sch, a_block, "taps"), "shared")
            sch.compute_at(taps_shared, c, preserve_unit_loops=True)
            t_copy = sch.fuse(*sch.get_loops(taps_shared)[-3:])  # (groups, the chunk, taps)
            _, t_warps, t_lanes = sch.split(t_copy, factors=[None, copy_warps[0] * copy_warps[1], 32])
            sch.bind(t_warps, "threadIdx.y")
            sch.bind(t_lanes, "threadIdx.x")

        init = sch.decompose_reduction(blocks.conv, c)

        # mma tiles of 16 consecutive pixels: of the flattened pixels (1x1), or of a padded row
        sch.transform_layout(a_block, ("write", 0), lambda *i: (
            *i[:-4], i[-4] // M_TILE, i[-3], i[-2], i[-1] // K_STEP, *mma.a_layout(i[-4] % M_TILE, i[-1] % K_STEP)))
        sch.transform_layout(blocks.conv, ("write", 0), lambda *i: (
            *i[:-2], i[-2] // M_TILE, i[-1] // GROUP, *mma.c_layout(i[-2] % M_TILE, i[-1] % GROUP)))

        # Each lane runs its own elements: rows/columns split as the layouts spread them, lanes fused.
        _lanes_a(sch, a_block)
        _lanes_b(sch, b_frag)
        _lanes_c(sch, *sch.get_loops(init)[-2:], vectorize=False)
        pix, ch = sch.get_loops(acc)[-2:]
        m, pix = sch.split(pix, factors=[None, M_TILE])
        g, ch = sch.split(ch, factors=[None, GROUP])
        sch.reorder(m, g, pix, ch)
        _lanes_c(sch, pix, ch, vectorize=True)

        sch.tensorize(p_i, mma.MMA_TF32)
        self._unroll(sch, k_o, K_UNROLL, self.untuned_k_unroll, tunable)
        if tunable:  # whether the build skips the padding k steps (`skip_padding_steps`): tuning times both
            sch.annotate(k_o, SKIP_STEPS_ATTR, sch.sample_categorical([0, 1], [0.5, 0.5]))
        self.overlap_staging(sch, c)
        return sch

    def _split_reduction(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, c, slices: int, cluster: bool):
        """The chunks in `slices` shares, each a grid of blocks of its own: `rfactor` makes the
        partial sums partial[share, pixels..., co] (global memory; returns the blocks with it as
        the conv, the share loop, then the conv's loops, and the sum and epilogue blocks); a second
        kernel sums the shares where the epilogue stores each output, a thread an output (KxK: a
        thread a position of the sum, whole images' staged pitch or rows' columns padded to tiles,
        storing its output if it has one).
        `cluster`: the partial sums are each block's tile in shared memory (no share axis: a block
        holds its own share's), left for `_cluster_reduction` to sum in the same kernel."""
        shares, _ = sch.split(c, factors=[slices, None])
        partial = sch.rfactor(shares, factor_axis=0)
        total, epilogue = blocks.conv, blocks.epilogue
        sch.set_scope(total, 0, "local")
        if cluster:
            sch.transform_layout(partial, ("write", 0), lambda s, *i: tuple(i), assume_injective_transform=True)
            sch.set_scope(partial, 0, "shared")
        pitch = _staged_pitch(sch)
        if pitch is not None:
            # the sum a thread a position of the staged pitch, the epilogue under it: under the
            # epilogue's threads the sum's position oh * pitch + ow is no quasi-affine binding,
            # and MetaSchedule's reduction postprocessor rejects every tuned draw of it
            # (`decompose-reduction`: "not a reduction block")
            sch.transform_layout(total, ("write", 0), lambda b, r, q, co: (b, r + q // pitch, q % pitch, co),
                                 assume_injective_transform=True)
            # (the epilogue reads [b, oh + ow // pitch, ow % pitch, co], ow < pitch: [b, oh, ow, co])
            _declare_read_region(sch, epilogue, _read_index(sch, epilogue, sch.get(total).writes[0].source.name),
                                 lambda b, oh, ow, co: (b, oh, ow, co))
        if cluster:
            n, oh, ow, _ = (int(d) for d in sch.get(epilogue).writes[0].source.shape)
            flat = sch.get(total).writes[0].source.shape
            if pitch is None and len(flat) == 2 and int(flat[0]) != n * oh * ow:
                # 1x1 with pixels padded to tiles: the sum's flattened pixels as (b, oh, ow), which
                # the epilogue (computed at each sum, `_cluster_reduction`) reads as such: from the
                # flattened index, reverse_compute_at derives a wrong domain there. (Not where they
                # fill the tiles: a tile's sums then span the boxes of whole images, and the
                # shared partial sums with them: 8 images (392 pixels) on conv5 1x1 reduce b32)
                sch.transform_layout(total, ("write", 0), lambda p, co: (p // (oh * ow), p % (oh * ow) // ow, p % ow, co),
                                     assume_injective_transform=True)
                _declare_read_region(sch, epilogue, _read_index(sch, epilogue, sch.get(total).writes[0].source.name),
                                     lambda b, oh, ow, co: (b, oh, ow, co))
        else:
            # KxK (whole images or rows): a thread a position of the sum (the last of its loops:
            # the shares), storing its output if it has one; under the epilogue's threads MetaSchedule's
            # reduction postprocessor rejects the sum of rows, whose columns are padded to tiles
            kxk = _kxk_block(sch.mod["main"]) is not None
            out_loops = sch.get_loops(total)[:-1] if kxk else sch.get_loops(epilogue)
            threads = sch.split(sch.fuse(*out_loops), factors=[None, 256])
            sch.bind(threads[0], "blockIdx.x")
            sch.bind(threads[1], "threadIdx.x")
            if kxk:
                sch.reverse_compute_at(epilogue, threads[1], preserve_unit_loops=True)
            else:
                sch.compute_at(total, threads[1], preserve_unit_loops=True)
        *pixels, co, share, c, k = sch.get_loops(partial)
        sch.reorder(share, *pixels, co)
        return SparseConvBlocks(blocks.x_stage, partial, None), [share], pixels, co, c, k, (total, epilogue)

    def tile_budget(self) -> int:
        """Bytes a 1x1 layer's staged tile may take (KxK layers: their format's boxes, `block_tiles`)."""
        return staging_budget(self.algorithm)

    def overlap_staging(self, sch: s_tir.Schedule, chunks) -> None:
        """Hook for variants that overlap the staging copy (computed at the loop over `chunks`)
        with the mma; here each chunk's copy, rounded to TF32 as it is stored, completes before
        its mma."""

    def design_variants(self) -> list[CUDAUnionTF32]:
        """This rule's design space, then the same with the reduction split in each of
        `REDUCTION_SLICES` shares (`_split_reduction` changes the blocks, so each split is a space
        of its own; declined where the shares do not divide the layer's chunks), summed by a
        second kernel, then by a cluster (`reduction_in_cluster`)."""
        if self.reduction_slices != 1:
            return [self]
        variants = [self]
        for cluster, slices in itertools.product((False, True), REDUCTION_SLICES):
            rule = copy.copy(self)
            rule.reduction_slices, rule.reduction_in_cluster = slices, cluster
            variants.append(rule)
        return variants

    def untuned_variants(self) -> list[CUDAUnionTF32]:
        """The untuned template with each pair of unrolls (`K_UNROLL` x `COPY_UNROLL`), each
        layout's other group count per warp (`untuned_group_regs` swapped, and one group a warp on
        KxK layers: twice the warps of a block for the same staged box, where conv4 3x3 b32 g8 is
        latency-bound at 27 warps an SM, stop 48; 4 -> 2 a warp ran it 37.2 -> 34.4 us, stop 44)
        and each of `KXK_GROUP_CAPS`, its own first: which wins depends on the layer (the stem 95
        -> 67 us with the k steps unrolled, conv2 3x3 62 -> 52 with the copy; H100,
        union_tf32-v7-nvidia-h100.json).
        Then blocks of the tallest rows (`untuned_tall_blocks`, `TALL_BLOCK_UNROLLS`, one and the
        template's groups a warp, each of `KXK_GROUP_CAPS`), and 1x1 operands loaded a chunk
        ahead (`untuned_chunk_operands`) with each pair of unrolls. On a 1x1 layer the KxK choices give
        the same kernels more than once; tuning builds each once. Then the template with the
        reduction split in each of `REDUCTION_SLICES` shares, summed by a second kernel and in a
        cluster, each k-step unroll (declined where the shares do not divide the layer's chunks,
        and clusters whose partial sums outgrow the staging budget)."""
        own = (self.untuned_k_unroll, self.untuned_copy_unroll, self.untuned_group_regs, self.untuned_kxk_group_cap)
        kxk_caps = (own[3], *(c for c in KXK_GROUP_CAPS if c != own[3]))
        variants = []
        group_regs = list(dict.fromkeys((own[2], own[2][::-1], (1, own[2][1]))))
        for choice in sorted(itertools.product(K_UNROLL, COPY_UNROLL, group_regs, kxk_caps), key=lambda c: c != own):
            rule = copy.copy(self)
            (rule.untuned_k_unroll, rule.untuned_copy_unroll, rule.untuned_group_regs,
             rule.untuned_kxk_group_cap) = choice
            variants.append(rule)
        for regs, cap in itertools.product(((1, own[2][1]), own[2]), KXK_GROUP_CAPS):
            rule = copy.copy(self)
            rule.untuned_k_unroll, rule.untuned_copy_unroll = TALL_BLOCK_UNROLLS
            rule.untuned_group_regs, rule.untuned_kxk_group_cap, rule.untuned_tall_blocks = regs, cap, True
            variants.append(rule)
        for k_unroll, copy_unroll in itertools.product(K_UNROLL, COPY_UNROLL):  # (KxK layers: as the template)
            rule = copy.copy(self)
            rule.untuned_k_unroll, rule.untuned_copy_unroll, rule.untuned_chunk_operands = k_unroll, copy_unroll, True
            variants.append(rule)
        for split in self.design_variants()[1:]:  # the splits tuning searches, each k-step unroll
            for k_unroll in K_UNROLL:
                rule = copy.copy(split)
                rule.untuned_k_unroll = k_unroll
                variants.append(rule)
        return variants

    def untuned_label(self) -> str:
        cls = type(self)
        parts = []
        if (self.untuned_k_unroll, self.untuned_copy_unroll) != (cls.untuned_k_unroll, cls.untuned_copy_unroll):
            parts.append(f"unroll k steps {self.untuned_k_unroll} copy {self.untuned_copy_unroll}")
        if self.untuned_group_regs != cls.untuned_group_regs:
            parts.append("groups a warp {} (KxK), {} (1x1)".format(*self.untuned_group_regs))
        if self.untuned_kxk_group_cap != cls.untuned_kxk_group_cap:
            parts.append(f"groups a KxK block {self.untuned_kxk_group_cap}")
        if self.reduction_slices != cls.reduction_slices:
            parts.append(f"reduction in {self.reduction_slices} shares" + (" (a cluster)" if self.reduction_in_cluster else ""))
        if self.untuned_tall_blocks:
            parts.append("tallest KxK blocks")
        if self.untuned_chunk_operands:
            parts.append("1x1 taps and weights a chunk ahead")
        return ", ".join(["untuned", *parts])

    @staticmethod
    def _unroll(sch: s_tir.Schedule, loop, choices: tuple[int, ...], untuned: int, tunable: bool) -> None:
        """`loop` unrolled (`#pragma unroll`) up to a step count drawn from `choices` (tuning), or
        `untuned`'s."""
        steps = sch.sample_categorical(list(choices), [1 / len(choices)] * len(choices)) if tunable else untuned
        sch.annotate(loop, "pragma_auto_unroll_max_step", steps)
        sch.annotate(loop, "pragma_unroll_explicit", 0)

    def _group_caps(self, tunable: bool, pixel_blocks: int | None = None, groups: int = 0) -> list[int]:
        """Most groups a block may hold, in order of preference (the first dividing the layer's
        groups is taken); `pixel_blocks`: a 1x1 layer's blocks of pixels (`group_cap` None)."""
        cap = self.tuned_group_cap if tunable else self.group_cap
        if cap is None:
            cap = 16 if pixel_blocks is not None else self.untuned_kxk_group_cap
            if pixel_blocks is not None:
                cap = next((c for c in (64, 32) if groups % c == 0
                            and pixel_blocks * (groups // c) >= self.untuned_min_blocks), cap)
        return [c for c in (64, 32, 16, 8, 4, 2, 1) if c <= cap]

    def _group_split(self, sch: s_tir.Schedule, g, g_cap: int, tunable: bool, pointwise: bool):
        """A block's `g_cap` groups: [serial, warps, per warp] (sampled when tuning)."""
        if tunable:
            return sch.sample_perfect_tile(g, n=3, max_innermost_factor=4)
        wanted = self.untuned_group_regs[pointwise]  # or the most below it that divides the cap
        g_regs = largest_divisor(g_cap, [c for c in (4, 2, 1) if c <= wanted])
        warps_g = largest_divisor(g_cap // g_regs, [16, 8, 4, 2, 1])
        return [g_cap // (warps_g * g_regs), warps_g, g_regs]

    def _bind_blocks(self, sch: s_tir.Schedule, shares, tiles, inner) -> None:
        """The grid: `tiles` (and a split reduction's `shares`) fused in blockIdx.x, in that order
        the loops above `inner`; in a cluster reduction the shares are blockIdx.y instead, inside
        the tile (a cluster is a tile's shares)."""
        if shares and self.reduction_in_cluster:
            sch.reorder(*tiles, *shares, *inner)
            sch.bind(sch.fuse(*tiles), "blockIdx.x")
            sch.bind(shares[0], "blockIdx.y")
        else:
            sch.reorder(*shares, *tiles, *inner)
            sch.bind(sch.fuse(*shares, *tiles), "blockIdx.x")

    def _tile_pixels(self, sch, blocks, pixels, co, c, k, tunable, shares=()):
        """1x1 layers: blocks of consecutive flattened pixels' tiles x groups (x `shares`, a split
        reduction's loop) (returns the warp loop, k step loop, mma pixel loop, the copy's warp
        factors)."""
        (p,) = pixels
        tiles, groups = sch.get(p).extent.value // M_TILE, sch.get(co).extent.value // GROUP
        g, j = sch.split(co, factors=[groups, GROUP])
        p, p_i = sch.split(p, factors=[tiles, M_TILE])
        k_o, k_i = sch.split(k, factors=[None, K_STEP])
        # A block's tiles and groups are drawn below caps: its staged chunk (16 pixels per tile,
        # rows padded to 4 mod 8 words: 8 tiles x 68 words = 34 KB for chunks of 64, 2 tiles x 260
        # words = 33 KB for the 1x1 default of 256) fits in the algorithm's staging budget
        # (48 KB of shared memory, half of it per tile where double-buffered), and its warps in 1024 threads.
        chunks = sch.get(c).extent * self.reduction_slices  # (c: one share's chunks, `_split_reduction`)
        row = staged_row_words(sch.get(blocks.x_stage).writes[0].source.shape[1] // chunks)
        fits = [t for t in (8, 4, 2, 1) if t * M_TILE * row * 4 <= self.tile_budget()]
        if not fits:
            return None
        p_cap = largest_divisor(tiles, fits)
        g_cap = largest_divisor(groups, self._group_caps(tunable, tiles // p_cap, groups))
        p_outer, p = sch.split(p, factors=[tiles // p_cap, p_cap])
        g_outer, g = sch.split(g, factors=[groups // g_cap, g_cap])
        if tunable:
            p_split = sch.sample_perfect_tile(p, n=3, max_innermost_factor=4)
        else:
            # 64 pixels x 16 groups (what the best of 8 random draws was on most ResNet-50 1x1
            # layers at batch 32, benchmarks/experiments/union_tf32-v2-staged-nvidia-h200.json)
            m_tiles = largest_divisor(p_cap, [2, 1])
            warps_p = largest_divisor(p_cap // m_tiles, [2, 1])
            p_split = [p_cap // (warps_p * m_tiles), warps_p, m_tiles]
        g_split = self._group_split(sch, g, g_cap, tunable, pointwise=True)
        p_b, p_w, p_m = sch.split(p, factors=p_split)
        g_b, g_w, g_r = sch.split(g, factors=g_split)
        self._bind_blocks(sch, shares, [p_outer, p_b, g_outer, g_b], [p_w, g_w, c, k_o, p_m, g_r, p_i, j, k_i])
        warp = sch.fuse(p_w, g_w)
        sch.bind(warp, "threadIdx.y")
        return warp, k_o, p_i, [p_split[1], g_split[1]]

    def _tile_rows(self, sch, blocks, pixels, co, c, k, tunable, shares=()):
        """Other layers: blocks of grid rows x column tiles (`union_tf32.block_tiles`, so the staged
        input is a box) x groups; warps over the rows, the block's column tiles and the groups
        (returns as `_tile_pixels`; None where no block fits)."""
        block = _kxk_block(sch.mod["main"])
        if block is None:
            return None
        rows, tiles = (int(block[key]) for key in ("rows", "tiles"))
        b, oh, ow = pixels
        n_oh, w_tiles = sch.get(oh).extent.value, sch.get(ow).extent.value // M_TILE
        tall = self.untuned_tall_blocks and not tunable
        if tall:
            rows = tallest_block_rows(block, n_oh, tiles, self.tile_budget())
        groups = sch.get(co).extent.value // GROUP
        g_cap = largest_divisor(groups, self._group_caps(tunable))
        g, j = sch.split(co, factors=[groups, GROUP])
        g_outer, g = sch.split(g, factors=[groups // g_cap, g_cap])
        oh_o, oh_i = sch.split(oh, factors=[n_oh // rows, rows])
        wt, p_i = sch.split(ow, factors=[w_tiles, M_TILE])
        wt_o, wt = sch.split(wt, factors=[w_tiles // tiles, tiles])
        k_o, k_i = sch.split(k, factors=[None, K_STEP])
        # A warp's mma tiles: column tiles and rows (a lane's taps serve all of them: its
        # tiles' A elements differ by constant offsets, benchmarks/experiments/union_sass.py)
        if tunable:
            w_split = sch.sample_perfect_tile(wt, n=2, max_innermost_factor=4)
            r_split = sch.sample_perfect_tile(oh_i, n=2, max_innermost_factor=4)
        else:  # (tall blocks: a warp holds them whole)
            m_tiles = tiles if tall else largest_divisor(tiles, [2, 1])
            m_rows = rows if tall else largest_divisor(rows, [4 // m_tiles, 2, 1])
            w_split, r_split = [tiles // m_tiles, m_tiles], [rows // m_rows, m_rows]
        g_split = self._group_split(sch, g, g_cap, tunable, pointwise=False)
        w_w, p_m = sch.split(wt, factors=w_split)
        r_w, r_m = sch.split(oh_i, factors=r_split)
        g_b, g_w, g_r = sch.split(g, factors=g_split)
        self._bind_blocks(sch, shares, [b, oh_o, wt_o, g_outer, g_b], [r_w, w_w, g_w, c, k_o, r_m, p_m, g_r, p_i, j, k_i])
        warp = sch.fuse(r_w, w_w, g_w)
        sch.bind(warp, "threadIdx.y")
        return warp, k_o, p_i, [r_split[0], w_split[0], g_split[1]]


def _staged_pitch(sch: s_tir.Schedule) -> int | None:
    """The staged pitch of a KxK layer's whole images (`union_tf32.image_pitch`), from the
    function's `BLOCK_ATTR`; None for 1x1 layers and KxK blocks of rows."""
    block = _kxk_block(sch.mod["main"])
    return block_pitch(block) if block is not None else None


def _kxk_block(func: tirx.PrimFunc):
    """A KxK layer's staged box (the function's `BLOCK_ATTR`); None for 1x1 layers."""
    attrs = func.attrs
    return attrs[BLOCK_ATTR] if attrs is not None and BLOCK_ATTR in attrs else None


def _declare_read_region(sch: s_tir.Schedule, block, read_index: int, region) -> None:
    """`Schedule.annotate_buffer_access` for a buffer of other rank than the block's iteration
    space (its Python wrapper insists on one range per iterator): `region(*iter_vars)` gives each
    axis of the buffer an expression or a (begin, end) pair."""
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    bounds = []
    for rng in region(*iter_vars):
        bounds.extend(rng if isinstance(rng, tuple) else (rng, rng + 1))
    index_map = IndexMap(initial_indices=iter_vars, final_indices=bounds, inverse_index_map=None)
    schedule_ffi.ScheduleAnnotateBufferAccess(sch, block, read_index, 0, index_map)  # 0: a read


def _lanes_a(sch: s_tir.Schedule, block) -> None:
    """A fragment (pixels x groups x 1 chunk x 8 taps): lane = (i % 8) * 4 + k % 4."""
    pix, grp, chunk, tap = sch.get_loops(block)[-4:]
    m, hi, lo = sch.split(pix, factors=[None, 2, 8])
    k_hi, k_lo = sch.split(tap, factors=[2, 4])
    sch.reorder(m, grp, chunk, hi, k_hi, lo, k_lo)
    sch.bind(sch.fuse(lo, k_lo), "threadIdx.x")


def _lanes_b(sch: s_tir.Schedule, block) -> None:
    """B fragment (groups x 1 chunk x 1 k step x 32 lanes x 2): stored in fragment order already, so
    a lane's two weights are adjacent (LowerWarpMemory takes no vector store into a warp buffer)."""
    lane, reg = sch.get_loops(block)[-2:]
    sch.bind(lane, "threadIdx.x")
    sch.unroll(reg)


def _lanes_c(sch: s_tir.Schedule, pix, ch, vectorize: bool) -> None:
    """C fragment (16 pixels x 8 channels, the two innermost loops): lane = (i % 8) * 4 + j // 2."""
    hi, lo = sch.split(pix, factors=[2, 8])
    j_hi, j_lo = sch.split(ch, factors=[4, 2])
    sch.reorder(hi, lo, j_hi, j_lo)
    sch.bind(sch.fuse(lo, j_hi), "threadIdx.x")
    if vectorize:
        sch.vectorize(j_lo)


#: the block of a k step's mma (its iteration values end with group, chunk, k step)
_MMA_BLOCK = "conv_update_o"
#: the same in a split reduction's partial sums (`CUDAUnionTF32._split_reduction`): its values
#: start with the share and end with group, chunk within the share, k step
_SPLIT_MMA_BLOCK = "conv_rf_update_o"


def skip_padding_steps(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A scheduled union function whose warps skip the k steps past their groups' unions: the body
    of the k-step loop runs only while ``k_step < max(steps(g, c))`` over the warp's groups g
    (each read from the packed taps, `union_tf32.skipped_steps_code`; a union as long as K has
    none, and takes them all). One warp-uniform branch a step: a predicate per group and element
    cost the k loop 3x its instructions (conv4 1x1 reduce: 252 against 92 per 8 mma, the step
    counts reloaded per element). KxK functions whose k loop the schedule unrolls whole keep all
    their steps (there the guard cost more than it saved), unless the loop's `SKIP_STEPS_ATTR`
    annotation (drawn by tuning) says otherwise; 0 there keeps any function's steps. Where a
    warp runs a step past a group's own, that group's count is gathered as a tap: KxK gathers get
    their taps clamped to 0 and above (1x1 gathers clamp them into the chunk already), so it
    reads the pixel's own position, whose weight there is 0. Applied by `tir_build` at every
    build, so tuning records replay unchanged; packing guarantees that skipped steps hold only
    padding, so a result never depends on it. Functions without the union's blocks, or with
    index forms this does not know, come back as they are."""
    reader = _first_realize(func.body, lambda r: any(t.source.name == "taps" for t in r.block.reads))
    taps = next(t.source for t in reader.block.reads if t.source.name == "taps") if reader is not None else None
    mma = _first_realize(func.body, lambda r: r.block.name_hint in (_MMA_BLOCK, _SPLIT_MMA_BLOCK))
    if taps is None or mma is None or not isinstance(mma.iter_values[-1], tirx.Var):
        return func
    k_pad = int(taps.shape[2])
    g, c, k_step = list(mma.iter_values)[-3:]
    if mma.block.name_hint == _SPLIT_MMA_BLOCK:  # the chunk: its share's first plus its place in it
        c = mma.iter_values[0] * mma.block.iter_vars[-2].dom.extent + c
    kxk = _kxk_block(func) is not None

    def steps(group):
        last = tirx.BufferLoad(taps, [group, c, k_pad - 1])
        return tirx.Select(last < 0, -last - 1, tirx.const(k_pad // K_STEP, "int32"))

    def visit(s, inner):
        """`inner`: the loops met under the k-step loop (None above it)."""
        if isinstance(s, tirx.For):
            if s.loop_var.same_as(k_step):
                found = {"unrolled": _unrolled(s)}
                body = visit(s.body, found)
                if "bound" not in found:
                    raise _Unsupported("no mma under the k-step loop")
                annotations = dict(s.annotations) if s.annotations is not None else {}
                chosen = annotations.pop(SKIP_STEPS_ATTR, None)  # drawn by tuning (records since stop 47)
                # otherwise an unrolled KxK k loop runs all its steps: guarded, the H100 records'
                # k loops took 27-41% more instructions (per-step branches and warp syncs, the
                # address arithmetic redone per step) and 6 of 7 such layers ran 4-15% slower in
                # the network bench (union_tf32.md, stop 47); its gather still clamps the count's
                # position
                skip = bool(int(chosen)) if chosen is not None else not (kxk and found["unrolled"])
                guarded = tirx.IfThenElse(k_step < found["bound"], body, None) if skip else body
                return _with_body(s, guarded, annotations)
            if inner is not None:
                inner.setdefault("loops", []).append(s)
            body = visit(s.body, inner)
            return s if body.same_as(s.body) else _with_body(s, body)
        if isinstance(s, s_tir.SBlockRealize):
            b = s.block
            if inner is not None and s.same_as(mma):
                inner["bound"] = _max_over(g, [lp for lp in inner.get("loops", []) if _uses(g, lp.loop_var)], steps)
                return s
            if b.name_hint == A_TF32 and kxk:  # (a 1x1 gather clamps its taps into the chunk already)
                if not isinstance(b.body, tirx.BufferStore):
                    raise _Unsupported("the gather is not one store")
                last = k_pad - 1 if inner is not None and inner["unrolled"] else None
                body = tirx.BufferStore(b.body.buffer, _clamped_taps(b.body.value, taps, last), b.body.indices)
            else:
                body = visit(b.body, inner)
            return s if body.same_as(b.body) else _realized_with(s, body)
        if isinstance(s, tirx.SeqStmt):
            seq = [visit(x, inner) for x in s.seq]
            return s if all(a.same_as(b) for a, b in zip(seq, s.seq)) else tirx.SeqStmt(seq)
        return s

    try:
        return func.with_body(visit(func.body, None))
    except _Unsupported:  # the function runs all steps
        return func


class _Unsupported(Exception):
    pass


def _max_over(expr, loops, f):
    """max of f(expr) over every value of `loops`' variables (constant extents)."""
    if not all(isinstance(lp.extent, tirx.IntImm) for lp in loops):
        raise _Unsupported("a loop of the warp's groups without a constant extent")
    best = None
    for values in itertools.product(*(range(lp.extent.value) for lp in loops)):
        v = f(_substitute(expr, {lp.loop_var: tirx.const(x, str(lp.loop_var.ty)) for lp, x in zip(loops, values)}))
        best = v if best is None else tirx.Max(best, v)
    return best


_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.FloorDiv, tirx.FloorMod, tirx.Min, tirx.Max)


def _substitute(expr, values: dict):
    """`expr` (an index) with the variables in `values` replaced."""
    return _rewritten(expr, lambda e: next((v for var, v in values.items() if var.same_as(e)), e)
                      if isinstance(e, tirx.Var) else e)


def _clamped_taps(expr, taps, last: int | None = None):
    """`expr` (the gather's value) with each load of `taps` clamped to 0 and above; with `last`
    (the union position that may hold a step count), only a load of that position: once the
    k-step loop is unrolled, nvcc folds the test away in every other step (conv3 3x3 b32 g8's
    H100 record, guarded: 505 -> 497 instructions per 24 mma)."""
    def clamp(e):
        if not (isinstance(e, tvm.ir.expr.TensorLoad) and e.source.same_as(taps)):
            return e
        clamped = tirx.Max(e, tirx.const(0, "int32"))
        return clamped if last is None else tirx.Select(e.indices[-1] == last, clamped, e)

    return _rewritten(expr, clamp)


def _unrolled(loop: tirx.For) -> bool:
    """Whether the schedule unrolls `loop` whole (`pragma_auto_unroll_max_step` >= its extent)."""
    steps = loop.annotations.get("pragma_auto_unroll_max_step") if loop.annotations is not None else None
    return steps is not None and isinstance(loop.extent, tirx.IntImm) and int(steps) >= loop.extent.value


def _rewritten(expr, leaf):
    """`expr` rebuilt bottom-up, each node passed through `leaf` (which returns it or what replaces
    it); the node kinds of the union's indices and gathers only (others: `_Unsupported`)."""
    if isinstance(expr, tvm.ir.expr.TensorLoad):  # (what tirx.BufferLoad makes)
        expr = tirx.BufferLoad(expr.source, [_rewritten(i, leaf) for i in expr.indices])
    elif isinstance(expr, (*_BINARY, tirx.BitwiseAnd)):
        expr = type(expr)(_rewritten(expr.a, leaf), _rewritten(expr.b, leaf))
    elif isinstance(expr, tvm.ir.Call):
        expr = tvm.ir.Call(expr.op, [_rewritten(a, leaf) for a in expr.args], expr.attrs, expr.ty_args, ret_ty=expr.ty)
    elif not isinstance(expr, (tirx.Var, tirx.IntImm)):
        raise _Unsupported(type(expr).__name__)
    return leaf(expr)


def _uses(expr, var) -> bool:
    if isinstance(expr, tirx.Var):
        return expr.same_as(var)
    if isinstance(expr, _BINARY):
        return _uses(expr.a, var) or _uses(expr.b, var)
    return False


def _first_realize(stmt, test):
    """The first block realize under `stmt` for which `test(realize)` holds (None if none)."""
    return _first_node(stmt, lambda s: isinstance(s, s_tir.SBlockRealize) and test(s))


def _first_node(stmt, test):
    """The first block realize or loop under `stmt` (itself included) for which `test` holds."""
    if isinstance(stmt, (s_tir.SBlockRealize, tirx.For)) and test(stmt):
        return stmt
    if isinstance(stmt, s_tir.SBlockRealize):
        return _first_node(stmt.block.body, test)
    if isinstance(stmt, tirx.For):
        return _first_node(stmt.body, test)
    if isinstance(stmt, tirx.SeqStmt):
        return next((r for r in (_first_node(x, test) for x in stmt.seq) if r is not None), None)
    return None


def _with_body(loop: tirx.For, body, annotations=None) -> tirx.For:
    """`loop` around `body` (and with `annotations`, if given)."""
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding,
                    loop.annotations if annotations is None else annotations, loop.step)


def _realized_with(realize: s_tir.SBlockRealize, body, alloc_buffers=None) -> s_tir.SBlockRealize:
    """`realize` with its block's body `body` (and buffers `alloc_buffers`, if given)."""
    b = realize.block
    return s_tir.SBlockRealize(realize.iter_values, realize.predicate, s_tir.SBlock(
        b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init,
        b.alloc_buffers if alloc_buffers is None else alloc_buffers, b.match_buffers, b.annotations))


def _thread_loop(var: tirx.Var, extent: int, tag: str, body) -> tirx.For:
    """A loop of `var` over [0, extent) bound to the thread axis `tag`."""
    return tirx.For(var, 0, extent, tirx.ForKind.THREAD_BINDING, body,
                    tirx.IterVar(tvm.ir.Range(0, extent), var, tirx.IterVar.ThreadIndex, tag))


#: block annotation of a cluster reduction's sum (`_cluster_reduction`): the shares it adds up,
#: each read from its own block of the cluster (`cluster_sums`, a build step)
CLUSTER_SUM_ATTR = "sparseconv_cluster_sum"


def _cluster_reduction(sch: s_tir.Schedule, partial, total, epilogue, slices: int, warps) -> None:
    """A split reduction's sum in the partial sums' kernel: after them, block y of the tile's
    cluster (blockIdx.y, as each share) sums the y-th slice of the tile over the shares and
    stores it through the epilogue, with the block's threads (`warps` x 32). The schedule sums
    every slice from the block's own shared tile; `cluster_sums` (at build) keeps the block's own
    slice and makes share s a read of block s's, between cluster barriers."""
    tile = sch.get_loops(partial)[0]  # blockIdx.x
    sch.reverse_compute_at(total, tile, preserve_unit_loops=True)
    loops = sch.get_loops(total)[1:]
    share = _reduction_loop(sch, total)
    sch.reorder(*[lp for lp in loops if not sch.get(lp).same_as(sch.get(share))], share)
    *outputs, _ = sch.get_loops(total)[1:]
    own, _, *lane_warps, lanes = sch.split(sch.fuse(*outputs), factors=[slices, None, *warps, 32])
    sch.bind(sch.fuse(*lane_warps), "threadIdx.y")
    sch.bind(lanes, "threadIdx.x")
    sch.reverse_compute_at(epilogue, lanes, preserve_unit_loops=True)
    # (the slices stay a loop here, which `cluster_sums` runs for the block's own only: bound to
    # blockIdx.y, the slice's reads of the shared sums would depend on it, and TVM would no
    # longer compact them to the block's tile: conv5 1x1 reduce b32 kept all 1568 pixels' rows)
    sch.annotate(own, CLUSTER_SUM_ATTR, slices)
    sch.annotate(total, CLUSTER_SUM_ATTR, slices)


def _reduction_loop(sch: s_tir.Schedule, block):
    """The loop of `block`'s one reduction iterator (None if it has none or several)."""
    name = sch.get(block).name_hint
    realize = _first_realize(sch.mod["main"].body, lambda r: r.block.name_hint == name)
    values = [v for iv, v in zip(realize.block.iter_vars, realize.iter_values) if iv.iter_type == tirx.IterVar.CommReduce]
    loops = [lp for lp in sch.get_loops(block) if len(values) == 1 and _uses(values[0], sch.get(lp).loop_var)]
    return loops[0] if len(loops) == 1 else None


def cluster_sums(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A scheduled union function whose cluster reduction (`_cluster_reduction`) reads each share
    from its own block: the sum block's load of the shared partial sums becomes a read of the
    same place in block s's shared memory (``mapa`` + ``ld.shared::cluster``, s the share it
    adds, in order: the sum does not depend on timing); the loop over the tile's slices runs the
    block's own (blockIdx.y) only, in a cluster of the shares (``clusterCtaIdx.y``, which TVM's
    runtime launches as the cluster shape), between two cluster barriers (the first after every
    block's partial sums, the second keeping each block's shared memory until the others have
    read it). Applied by `tir_build` at every build, so tuning records replay unchanged;
    functions without such a sum come back as they are."""
    from tvm.script import tirx as T  # (the PTX builtins' constructors)

    total = _first_realize(func.body, lambda r: r.block.annotations is not None
                           and CLUSTER_SUM_ATTR in r.block.annotations  # (not its init, once decomposed)
                           and any(iv.iter_type == tirx.IterVar.CommReduce for iv in r.block.iter_vars))
    if total is None:
        return func
    shares = int(total.block.annotations[CLUSTER_SUM_ATTR])
    block = total.block
    share = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    store = block.body
    loads = [e for e in _operands(store.value) if isinstance(e, tvm.ir.expr.TensorLoad)
             and e.source.scope() == "shared"] if isinstance(store, tirx.BufferStore) else []
    if len(share) != 1 or len(loads) != 1:
        raise ValueError(f"{block.name_hint}: a cluster sum is one store adding one shared load per share")
    mapped = tirx.decl_buffer((1,), "uint32", name="cluster_address", scope="local")
    remote = tirx.decl_buffer((1,), "float32", name="cluster_value", scope="local")
    partial = loads[0].source
    value = _rewritten(store.value, lambda e: tirx.BufferLoad(remote, [0]) if isinstance(e, tvm.ir.expr.TensorLoad)
                       and e.source.same_as(partial) else e)
    body = tirx.SeqStmt([
        tirx.Evaluate(T.ptx.mapa.shared__cluster.u32(mapped[0], T.cuda.cvta_generic_to_shared(
            T.address_of(loads[0])), tirx.Cast("uint32", share[0]))),
        tirx.Evaluate(T.ptx.ld.shared__cluster.f32(remote[0], mapped[0])),
        tirx.BufferStore(store.buffer, value, store.indices)])
    summed = _realized_with(total, body, [*block.alloc_buffers, mapped, remote])
    # The slices' loop is annotated; the H100 records tuned first (stop 59) bound it to blockIdx.y
    # in the schedule instead (right where TVM still compacts the shared sums to the tile, as on
    # their batch-1 layers): there the sum's blockIdx.y loop becomes the cluster
    bound_slices = _first_node(func.body, lambda s: isinstance(s, tirx.For) and s.annotations is not None
                               and CLUSTER_SUM_ATTR in s.annotations) is None
    found = {}

    def clustered(block_y: tirx.Var, body, bound: tirx.For | None = None):
        """`body` in a cluster of the shares (clusterCtaIdx.y) under blockIdx.y (`bound`, the
        schedule's own loop, or a new one of `block_y`), between cluster barriers."""
        found["slices"] = True
        in_cluster = _thread_loop(tirx.Var("cluster_rank", block_y.ty), shares, "clusterCtaIdx.y", body)
        grid = _with_body(bound, in_cluster) if bound is not None else _thread_loop(block_y, shares, "blockIdx.y",
                                                                                     in_cluster)
        sync = tirx.Evaluate(T.cuda.cluster_sync())
        return tirx.SeqStmt([sync, grid, sync])

    def visit(s):
        if isinstance(s, s_tir.SBlockRealize):
            if s.same_as(total):
                found["sum"] = True
                return summed
            new = visit(s.block.body)
            return s if new.same_as(s.block.body) else _realized_with(s, new)
        if isinstance(s, tirx.For):
            new = visit(s.body)
            if not bound_slices and CLUSTER_SUM_ATTR in (s.annotations or {}):  # the slices: the block's own
                block_y = tirx.Var("cluster_block", s.loop_var.ty)
                return clustered(block_y, _with_body(s, tirx.IfThenElse(s.loop_var == block_y, new, None), {
                    k: v for k, v in s.annotations.items() if k != CLUSTER_SUM_ATTR}))
            if new.same_as(s.body):
                return s
            if (bound_slices and "slices" not in found and "sum" in found and s.thread_binding is not None
                    and s.thread_binding.thread_tag == "blockIdx.y"):  # (the sum's own blockIdx.y loop)
                return clustered(s.loop_var, new, bound=s)
            return _with_body(s, new)
        if isinstance(s, tirx.SeqStmt):
            seq = [visit(x) for x in s.seq]
            return s if all(a.same_as(b) for a, b in zip(seq, s.seq)) else tirx.SeqStmt(seq)
        return s

    body = visit(func.body)
    if "sum" not in found or "slices" not in found:
        raise ValueError("a cluster sum without its loop of slices")
    return func.with_body(body)


def _operands(expr):
    """`expr` and, through sums, its terms."""
    yield expr
    if isinstance(expr, tirx.Add):
        yield from _operands(expr.a)
        yield from _operands(expr.b)
