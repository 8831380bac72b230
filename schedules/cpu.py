"""CPU (LLVM) design space for the sparse convolution.

Parallel over (image, block of output rows); inside, a register tile of `co_tile` output channels x
`ow_tile` output columns, vectorised along the columns: for each stored nonzero k, every channel
of the tile broadcasts its weight and does one vector FMA with `ow_tile` consecutive inputs
(contiguous for stride 1, thanks to the channel-major gather layout of `algorithms/ell_gather.py`).

- `CPUDirectTile`: the block's rows one after another, each with its own register tile.
- `CPURowTile`: `oh_tile` rows in the register tile too, so each nonzero's offset and broadcast
  weight serve rows x columns FMAs (on 2 znver3 cores the headline ran in 129 ms against the
  record's 152 ms, `benchmarks/experiments/cpu_loop_orders-cpu-znver3.json`).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import SparseConvBlocks, SparseConvRule, largest_divisor


def default_tiles(n_oh: int, n_ow: int, n_co: int):
    """Untuned choice: 32 columns x 4 channels per tile (8 AVX-512 / 16 AVX2 accumulators).

    A narrow output (ResNet's 7x7, 14x14) is vectorised whole, rather than by a small divisor.
    """
    ow_in = largest_divisor(n_ow, DEFAULT_OW)
    if ow_in < 4 and n_ow <= DEFAULT_OW[0]:
        ow_in = n_ow
    co_in = largest_divisor(n_co, DEFAULT_CO)
    return [None, ow_in], [None, co_in], [None, 1], DEFAULT_UNROLL


DEFAULT_OW, DEFAULT_CO, DEFAULT_UNROLL = [32, 16, 8, 4, 2], [4, 2], 4


class CPUDirectTile(SparseConvRule):
    """Register-tiled direct sparse convolution for LLVM targets."""

    name = "cpu-direct-tile"
    target_kind = "llvm"
    rows_in_registers = False
    max_oh_tile, max_ow_tile = 8, 64

    def default_tiles(self, n_oh: int, n_ow: int, n_co: int):
        return default_tiles(n_oh, n_ow, n_co)

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target: Target, tunable: bool):
        b, oh, ow, co, k = sch.get_loops(blocks.conv)
        n_oh = sch.get(oh).extent.value
        n_ow = sch.get(ow).extent.value
        n_co = sch.get(co).extent.value

        if tunable:
            ow_tile = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=self.max_ow_tile)
            co_tile = sch.sample_perfect_tile(co, n=2, max_innermost_factor=8)
            oh_tile = sch.sample_perfect_tile(oh, n=2, max_innermost_factor=self.max_oh_tile)
            unroll = sch.sample_categorical([0, 4, 16], [0.34, 0.33, 0.33])
        else:
            ow_tile, co_tile, oh_tile, unroll = self.default_tiles(n_oh, n_ow, n_co)
        ow_o, ow_i = sch.split(ow, factors=ow_tile)
        co_o, co_i = sch.split(co, factors=co_tile)
        oh_o, oh_i = sch.split(oh, factors=oh_tile)
        if self.rows_in_registers:
            sch.reorder(b, oh_o, ow_o, co_o, k, oh_i, co_i, ow_i)
            sch.unroll(oh_i)
        else:
            sch.reorder(b, oh_o, oh_i, ow_o, co_o, k, co_i, ow_i)

        # Accumulate the (co_tile x ow_tile) tile in a local buffer that LLVM keeps in registers.
        acc = sch.cache_write(blocks.conv, 0, "local")
        sch.reverse_compute_at(acc, co_o, preserve_unit_loops=True)
        # Columns innermost in the accumulator, so its vectors are contiguous (registers, no shuffles).
        sch.transform_layout(blocks.conv, ("write", 0), lambda b_, h, w, c: (b_, h, c, w))
        if blocks.epilogue is not None:
            self.attach_epilogue(sch, blocks)
        sch.unroll(co_i)
        sch.vectorize(ow_i)
        sch.annotate(k, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(k, "pragma_unroll_explicit", 1)
        wb = sch.get_loops(acc)[-2:]  # write-back of the tile: vectorise along channels
        sch.reorder(wb[1], wb[0])
        sch.vectorize(sch.get_loops(acc)[-1])

        sch.parallel(sch.fuse(b, oh_o))
        # Last: parallel/vectorize need the reduction block with its init still attached.
        sch.decompose_reduction(blocks.conv, k)
        schedule_relayout(sch, blocks.x_stage)
        return sch


#: channels x positions per block of the channel-major relayout
RELAYOUT_BLOCK = 16


def schedule_relayout(sch: s_tir.Schedule, x_stage) -> None:
    """ell-gather's relayout ``xg[n, c * plane + r]`` (a transpose of the NHWC input) in blocks of
    `RELAYOUT_BLOCK` channels x positions, channels innermost (contiguous reads), parallel over the
    blocks. In chunks of 1024 flat output elements, as before, each chunk read one channel of every
    pixel (lines of 16 channels fetched for one): on the 2-core znver3 the relayout of conv4 1x1
    reduce b1 (14x14x1024) took about half of the layer
    (`benchmarks/experiments/cpu_gather_share.py`)."""
    xb, xf = sch.get_loops(x_stage)
    x = next((region.source for region in sch.get(x_stage).reads if len(region.source.shape) == 4), None)
    if x is None:  # the stage reads no input (every position is padding): zeros, in flat chunks
        sch.parallel(sch.fuse(xb, sch.split(xf, factors=[None, 1024])[0]))
        return
    cin = int(x.shape[3])  # x: the NHWC input
    plane = int(sch.get(xf).extent) // cin
    c, r = sch.split(xf, factors=[None, plane])
    c_o, c_i = sch.split(c, factors=[None, RELAYOUT_BLOCK])
    r_o, r_i = sch.split(r, factors=[None, RELAYOUT_BLOCK])
    sch.reorder(xb, c_o, r_o, r_i, c_i)
    sch.parallel(sch.fuse(xb, c_o, r_o))


#: the last steps of a trace recorded before `schedule_relayout`: the relayout in chunks of 1024
_OLD_RELAYOUT = ("GetLoops", "Split", "Fuse", "Parallel")


def without_old_relayout(trace: s_tir.schedule.Trace) -> s_tir.schedule.Trace | None:
    """`trace` (a CPU record's) without its relayout steps if it schedules the relayout the old way
    (chunks of 1024, the trace's last steps before post-processing), else None. Replaying that and
    then `schedule_relayout` gives old records the blocked relayout: their convolution's schedule
    (what was tuned) is untouched."""
    insts = list(trace.insts)
    end = next((i for i, inst in enumerate(insts) if inst.kind.name == "EnterPostproc"), len(insts))
    tail = insts[end - len(_OLD_RELAYOUT):end]
    if tuple(inst.kind.name for inst in tail) != _OLD_RELAYOUT or str(tail[1].inputs[-1]) != "1024":
        return None
    kept = insts[:end - len(_OLD_RELAYOUT)] + insts[end:]
    return s_tir.schedule.Trace(kept, {inst: d for inst, d in trace.decisions.items() if inst in kept})


class CPURowTile(CPUDirectTile):
    """As `CPUDirectTile`, with a few output rows in the register tile (rows x channels x columns)."""

    name = "cpu-row-tile"
    rows_in_registers = True
    max_oh_tile, max_ow_tile = 4, 16  # 16 AVX2 / 32 AVX-512 registers hold the tile

    def default_tiles(self, n_oh: int, n_ow: int, n_co: int):
        # The best of benchmarks/experiments/cpu_loop_orders: 4 rows x 8 columns x 2 channels.
        return ([None, largest_divisor(n_ow, [8, 4, 2])], [None, largest_divisor(n_co, [2])],
                [None, largest_divisor(n_oh, [4, 2])], DEFAULT_UNROLL)
