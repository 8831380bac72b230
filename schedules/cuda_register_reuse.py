"""The kernel of algorithm "register-reuse" (CUDA): the kernel's pattern compiled into the code.

The other algorithms read the sparse kernel as data: an index and a
load per multiply-add, at most 25% of the fp32 peak (shared memory delivers 32 words per clock per
SM against 128 FMA lanes). Here each nonzero is one FMA whose input is a register (an index fixed
in the code), whose weight is an immediate and whose sum is a register: one input word read from
shared memory feeds ``group * density`` FMAs (3.2 at 32 channels and 90% sparsity), and no weight
is loaded. The code is one straight-line FMA per nonzero, so it is compiled through LLVM's NVPTX
backend (`tvm_sparseconv/nvptx_build.py`), not nvcc. The algorithm (`algorithms/register_reuse.py`)
calls `emit` with the tile of its record; the tiles were measured by
`benchmarks/experiments/register_reuse.py` (write-up `register_reuse.md`).

For a 1x1 layer with weight matrix ``w`` (Cin, Cout) and a `Tile` (a KxK layer: the same per tap,
on the input shifted by the tap, see `emit`):

- grid: blockIdx.x over tiles of ``pixels`` output pixels (flattened n, oh, ow), blockIdx.y over
  blocks of ``groups`` channel groups; threads (threadIdx.x: pixel, threadIdx.y: group);
- per stage of ``stage`` input channels: the block copies its pixels' channels from NHWC global
  memory to shared (float4, coalesced along channels; zeros outside the image), the next stage's
  loads in flight during this stage's FMAs (software pipeline through registers); then each
  thread copies ``regs`` of its pixel's channels at a time into registers and runs the FMAs of
  its group's nonzeros among them, each with an immediate weight;
- the epilogue (bias, activation) is applied in registers; the sums then go through shared
  memory, one group of the block at a time, so that the stores are whole float4 rows.
- split-K tiles (``splits``): blockIdx.z takes a share of the stages; the shares are added up by
  a second kernel from a workspace, or (``reduce="cluster"``, sm_90) by the shares' blocks as one
  thread-block cluster reading each other's shared memory.

Each group's FMAs sit behind a binary tree of (warp-uniform) branches on the group index, so a
warp walks only its own group's code: per step (`layout="steps"`), or once around the group's
whole pipeline (`layout="groups"`: one sequential run of code per warp; not yet measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from tvm import tirx
from tvm.ir import Range, StringImm

from tvm_sparseconv.algorithms.base import activate
from tvm_sparseconv.nvptx_build import VALUE, SHARED, llvm_barrier, ptx_marker, with_splices

from .pattern_code import halo_input, output_pixel, tap_input

F32 = "float32"
#: bump when the emitted kernel changes for the same inputs (part of the compiled module's cache key)
EMITTER_VERSION = 8
#: FMAs per kernel above which the code is split into several kernels launched in turn. Each launch
#: costs a few us at batch 1 (H200, conv4 1x1 reduce b1, 26,214 FMAs: 4 kernels 23.3 us, one 9.6
#: us; benchmarks/experiments/register_reuse-v8/-v9-*.json), and with the "groups" layout one long
#: kernel compiles no slower than its parts (2 cores: 26,214 FMAs LLVM 6.9 s + ptxas 8.4 as one,
#: 8.7 + 8.3 as four; 58,982: 20.2 + 11.9 against 18.2 + 11.0 as eight), so every layer within
#: the algorithm's budget is one kernel (long code is compiled in pieces, `FMAS_PER_PIECE`).
FMAS_PER_KERNEL = 320_000
#: FMAs per piece compiled apart (in parallel processes) and joined into that one kernel: LLVM's
#: time is about linear in the code, so pieces on N cores take about 1/N of it
FMAS_PER_PIECE = 16_000
#: FMAs per piece where the pieces are linked as objects compiled apart (code too long to join,
#: `nvptx_build.compile_nvptx_pieces`): ptxas's time per FMA grows with a function's length
#: (2 cores: 99 us per FMA at 6,587 FMAs, 147 at 13,230, 338 at 52,467)
FMAS_PER_LINKED_PIECE = 8_000
#: the generated function's name (the module's entry: ``mod["sparse_conv2d"](x, [bias], out)``)
FUNCTION_NAME = "sparse_conv2d"
#: blocks of a thread-block cluster that a kernel may ask for at compile time (the portable size;
#: larger needs a launch attribute TVM's launcher does not set)
MAX_CLUSTER = 8
#: shared row padding (words): keeps a warp's float4 reads of 32 pixel rows conflict-free
ROW_PAD = 4


@dataclass(frozen=True)
class Tile:
    """One point of the design space (what tuning chooses per layer)."""

    group: int = 32  # output channels per thread
    pixels: int = 32  # threads along pixels per block (a multiple of 32 keeps branches per warp)
    groups: int = 4  # channel groups per block (threadIdx.y)
    stage: int = 64  # input channels staged in shared memory per step
    regs: int = 16  # input channels a thread holds in registers at a time
    #: code layout: "groups" (one branch per group around its whole pipeline) or "steps" (each
    #: step's FMAs of every group behind branches on the group)
    layout: str = "steps"
    #: blocks along blockIdx.z, each summing a contiguous share of the stages into a workspace that
    #: a last kernel reduces (split-K: a layer of few pixels gets more blocks, and each SM walks
    #: only its share of the code)
    splits: int = 1
    #: KxK kernels: a block's pixels are a segment of one output row (or, for maps narrower than
    #: `pixels`, several whole rows), and each stage copies the input rows under them with the
    #: halo once per (kernel row, channel range); the threads walk the row's taps in shared memory
    #: (else one stage per tap, each copying the shifted input). `halo_geometry`.
    halo: bool = False
    #: a cap on the kernel's registers (ptxas `-maxrregcount`; 0: ptxas's choice): e.g. 80 lets 3
    #: blocks of 256 threads share an SM's 65,536 registers where ptxas gives 94. Pieces linked
    #: apart (`register_reuse.MAX_JOINED_FMAS`) keep ptxas's choice: the cap is the kernel's.
    registers: int = 0
    #: where a stage's FMAs issue the next stage's global loads: "start" (before them) or
    #: "middle" (halfway; names ending in M). Where ptxas leaves them shapes its register
    #: allocation of the spliced FMAs (conv3 1x1 reduce b32 g32p64x4G: 124 registers, 78 with
    #: "middle"; `register_reuse.md`, stops 29-30).
    prefetch: str = "start"
    #: halo tiles: consecutive output rows per thread (names with Y<rows>). Each staged input row
    #: serves every kernel row that reads it for each of the thread's rows: an 11x11 kernel
    #: stages and loads 12 input rows per 2 output rows instead of 22 (the headline's floor:
    #: `register_reuse.md`, stop 32), for `rows` x `group` sums per thread and `rows` times the
    #: FMAs in the code. A block's rows stay within one image.
    rows: int = 1
    #: pixel tiles a block computes in turn (names with L<n>): the grid shrinks by this factor and
    #: a block's code, run again for each tile, can stay in the SM's instruction cache instead of
    #: being fetched by every block (the deep layers' stalls are mostly instruction fetch: stop
    #: 22's ncu); with one group per block and split-K, each SM then walks one short stream
    loops: int = 1
    #: how a split-K tile adds up its shares: "kernel" (each share's sums into a global workspace,
    #: which a second kernel adds up) or "cluster" (names ending in C; sm_90): the shares of a
    #: pixel tile are one thread-block cluster, and after a cluster barrier each block adds up
    #: its slice of the sums from every block's shared memory (DSMEM) and stores it: no workspace,
    #: no second kernel (at batch 1 a second kernel costs about as much as the reduction it does)
    reduce: str = "kernel"

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.stage % self.regs or self.regs % 4 or self.pixels % 32:
            raise ValueError(f"invalid tile {self}: stage must be a multiple of regs, regs of 4, pixels of 32")
        if self.layout not in ("groups", "steps"):
            raise ValueError(f"invalid tile {self}: layout must be 'groups' or 'steps'")
        if self.splits < 1:
            raise ValueError(f"invalid tile {self}: splits must be at least 1")
        if self.registers and not 32 <= self.registers <= 255:
            raise ValueError(f"invalid tile {self}: registers must be 0 (ptxas's choice) or 32 to 255")
        if self.prefetch not in ("start", "middle"):
            raise ValueError(f"invalid tile {self}: prefetch must be 'start' or 'middle'")
        if self.loops < 1:
            raise ValueError(f"invalid tile {self}: loops must be at least 1")
        if self.reduce not in ("kernel", "cluster"):
            raise ValueError(f"invalid tile {self}: reduce must be 'kernel' or 'cluster'")
        if self.reduce == "cluster" and (not 2 <= self.splits <= MAX_CLUSTER or self.loops > 1):
            raise ValueError(f"invalid tile {self}: a cluster reduction needs 2 to {MAX_CLUSTER} splits and loops 1")
        if self.rows < 1 or (self.rows > 1 and (not self.halo or self.splits > 1)):
            raise ValueError(f"invalid tile {self}: rows must be at least 1, and above 1 only for halo tiles "
                             f"without split-K")


#: the design space measured so far (benchmarks/experiments/register_reuse.py), by name
TILES: dict[str, Tile] = {
    "g32p32x8": Tile(group=32, pixels=32, groups=8, stage=64, regs=16),
    "g32p64x4": Tile(group=32, pixels=64, groups=4, stage=64, regs=16),
    "g16p64x4": Tile(group=16, pixels=64, groups=4, stage=64, regs=16),
    "g64p32x4": Tile(group=64, pixels=32, groups=4, stage=32, regs=8),
    "g8p32x4": Tile(group=8, pixels=32, groups=4, stage=128, regs=16),
    "g16p32x2": Tile(group=16, pixels=32, groups=2, stage=256, regs=16),
    # one channel group per block: the warps of an SM walk the same code (instruction cache)
    "g32p128x1": Tile(group=32, pixels=128, groups=1, stage=64, regs=16),
    "g16p128x1": Tile(group=16, pixels=128, groups=1, stage=64, regs=16),
    "g32p64x1": Tile(group=32, pixels=64, groups=1, stage=128, regs=16),
    # one branch per group around its whole pipeline (sequential code per warp)
    "g32p64x4G": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups"),
    "g32p32x8G": Tile(group=32, pixels=32, groups=8, stage=64, regs=16, layout="groups"),
    "g64p32x4G": Tile(group=64, pixels=32, groups=4, stage=32, regs=8, layout="groups"),
    "g16p32x2G": Tile(group=16, pixels=32, groups=2, stage=256, regs=16, layout="groups"),
    # layers of 64 output channels: two groups of 32 per block, no idle group
    "g32p128x2G": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups"),
    "g16p64x4G": Tile(group=16, pixels=64, groups=4, stage=64, regs=16, layout="groups"),
    # split-K for layers of few pixels (batch 1): blockIdx.z over shares of the stages
    "g32p32x1s4G": Tile(group=32, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=4),
    "g32p32x1s8G": Tile(group=32, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=8),
    "g32p32x2s4G": Tile(group=32, pixels=32, groups=2, stage=64, regs=16, layout="groups", splits=4),
    "g16p32x2s4G": Tile(group=16, pixels=32, groups=2, stage=64, regs=16, layout="groups", splits=4),
    "g16p32x1s8G": Tile(group=16, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=8),
    "g32p64x1s4G": Tile(group=32, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=4),
    "g32p32x4s2G": Tile(group=32, pixels=32, groups=4, stage=64, regs=16, layout="groups", splits=2),
    "g32p32x1s16G": Tile(group=32, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=16),
    # one group per block and every block the same code where Cout <= group (the headline: 64):
    # the warps of every SM walk one instruction stream, and each input register feeds
    # group * density FMAs; 1.6-1.8x slower than g32p128x2G on the headline (register_reuse-v14)
    "g64p128x1G": Tile(group=64, pixels=128, groups=1, stage=32, regs=8, layout="groups"),
    "g64p64x1G": Tile(group=64, pixels=64, groups=1, stage=32, regs=8, layout="groups"),
    "g64p128x1": Tile(group=64, pixels=128, groups=1, stage=32, regs=8),
    # halo tiles (KxK): a block is a segment of an output row; each kernel row's input is staged
    # once with its halo and the row's taps read from shared memory (not one stage per tap)
    "g32p128x2GH": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True),
    "g32p64x4GH": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True),
    "g32p64x4H": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, halo=True),
    "g32p32x8GH": Tile(group=32, pixels=32, groups=8, stage=64, regs=16, layout="groups", halo=True),
    "g64p32x4GH": Tile(group=64, pixels=32, groups=4, stage=32, regs=8, layout="groups", halo=True),
    "g32p128x1H": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, halo=True),
    "g64p128x1GH": Tile(group=64, pixels=128, groups=1, stage=32, regs=8, layout="groups", halo=True),
    "g32p64x2GH": Tile(group=32, pixels=64, groups=2, stage=64, regs=16, layout="groups", halo=True),
    "g32p128x2GH32": Tile(group=32, pixels=128, groups=2, stage=64, regs=32, layout="groups", halo=True),  # regs 32
    "g32p64x4GH32": Tile(group=32, pixels=64, groups=4, stage=64, regs=32, layout="groups", halo=True),  # regs 32
    # halo with split-K, for KxK layers of few pixels (batch 1)
    "g32p32x1s4GH": Tile(group=32, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=4, halo=True),
    "g32p32x1s8GH": Tile(group=32, pixels=32, groups=1, stage=64, regs=16, layout="groups", splits=8, halo=True),
    "g32p32x2s4GH": Tile(group=32, pixels=32, groups=2, stage=64, regs=16, layout="groups", splits=4, halo=True),
    "g32p64x1s4GH": Tile(group=32, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=4, halo=True),
    "g16p32x2s4GH": Tile(group=16, pixels=32, groups=2, stage=64, regs=16, layout="groups", splits=4, halo=True),
    # register caps (R<n>): more resident blocks per SM against spills
    "g32p128x2GHR80": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True, registers=80),
    "g32p128x2GHR72": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True, registers=72),
    "g32p32x8GHR80": Tile(group=32, pixels=32, groups=8, stage=64, regs=16, layout="groups", halo=True, registers=80),
    "g32p64x4GHR80": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True, registers=80),
    "g32p64x4R80": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, registers=80),
    "g32p64x4GR80": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", registers=80),
    "g32p128x2GR80": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", registers=80),
    # split-K for batch-32 layers of small maps and long code (conv5): more blocks, and each SM
    # walks a share of a group's code
    "g32p128x2s4GH": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", splits=4, halo=True),
    "g32p64x4s4GH": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", splits=4, halo=True),
    "g32p64x4s4": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, splits=4),  # staging code once per stage
    "g32p64x4s4G": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", splits=4),
    "g32p128x2s4GHR80": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", splits=4, halo=True,
                             registers=80),
    # more threads for batch-32 KxK layers of small maps (conv4 3x3: 12 warps per SM with g32): a
    # group of 16 channels, or split-K in two. Lost on every layer tried (v23: conv4 3x3 b32
    # 90.2-108.0 us against 74.7)
    "g16p128x2GH": Tile(group=16, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True),
    "g16p64x4GH": Tile(group=16, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True),
    "g32p128x2s2GHR80": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", splits=2, halo=True,
                             registers=80),
    "g32p64x4s2GH": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", splits=2, halo=True),
    # batch-32 layers of 7x7 maps (conv5: 1,568 pixels, each group's code run by few blocks): more
    # warps of a block on one group's code (one instruction stream instead of four). Lost (v23:
    # conv5 3x3 b32 195.4-579.2 us against g32p64x4s4's 156.4)
    "g32p128x1G": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, layout="groups"),
    "g32p256x1G": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, layout="groups"),
    "g32p128x1s4": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, splits=4),
    "g32p256x1s4": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, splits=4),
    "g32p128x2s4": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, splits=4),
}

# the next stage's loads halfway through the FMAs (names ending in M): ptxas allocates the spliced
# FMAs' registers differently; up to 1.4x faster on some layers, up to 1.2x slower on others (v23)
TILES.update({f"{name}M": replace(TILES[name], prefetch="middle") for name in (
    "g32p64x4G", "g32p64x4", "g32p32x8G", "g64p32x4G", "g32p128x2G", "g32p64x4GR80", "g32p64x4GH32", "g32p32x8GH",
    "g32p64x4GH", "g32p128x2GHR80", "g32p128x2GHR72", "g32p64x4s4")})

# several output rows per thread (Y<rows>): a staged input row feeds every kernel row reading it
# (ptxas gives g32p128x2GHY2 157 registers, one block per SM; R128: two, 20 bytes spilled). Lost
# on the headline (v24: g32p128x2GHY2R128 290.5 us against g32p128x2GHR80M's 208.0; ncu: half
# the shared-memory traffic, but instruction fetch 76% of stalls) and on conv3/conv4 3x3 b32;
# won conv1 7x7 s2 b32 (g32p64x4GHY2 92.0 against 99.2)
TILES.update({
    "g32p128x2GHY2": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True, rows=2),
    "g32p128x2GHY2R128": Tile(group=32, pixels=128, groups=2, stage=64, regs=16, layout="groups", halo=True, rows=2,
                              registers=128),
    "g16p128x4GHY4R128": Tile(group=16, pixels=128, groups=4, stage=64, regs=16, layout="groups", halo=True, rows=4,
                              registers=128),
    "g32p128x1GHY4": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, layout="groups", halo=True, rows=4),
    "g32p64x4GHY2": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True, rows=2),
    "g32p64x4GHY2R128": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True, rows=2,
                             registers=128),
    "g32p64x4GHY4": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, layout="groups", halo=True, rows=4),
    "g32p32x8GHY2": Tile(group=32, pixels=32, groups=8, stage=64, regs=16, layout="groups", halo=True, rows=2),
    "g32p64x4HY2": Tile(group=32, pixels=64, groups=4, stage=64, regs=16, halo=True, rows=2),
    # one group per block: every warp of an SM on one instruction stream (the headline's issue
    # gaps are mostly instruction fetch: stop 27's ncu), each group staging the input apart.
    # Lost (v24: headline 302.1 and 305.5 us against 208.0)
    "g32p256x1GHR80": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, layout="groups", halo=True,
                           registers=80),
    "g32p128x1GHR80": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, layout="groups", halo=True,
                           registers=80),
    "g32p256x1GHY2R128": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, layout="groups", halo=True, rows=2,
                              registers=128),
    "g32p128x1GHY2R128": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, layout="groups", halo=True, rows=2,
                              registers=128),
    "g32p128x1GHY2": Tile(group=32, pixels=128, groups=1, stage=64, regs=16, layout="groups", halo=True, rows=2),
})
TILES.update({f"{name}M": replace(TILES[name], prefetch="middle") for name in (
    "g32p128x2GHY2", "g32p128x2GHY2R128", "g32p64x4GHY2", "g32p64x4GHY2R128")})

# blocks looping over pixel tiles (L<n>) for batch-32 layers of small maps and long code (conv4,
# conv5): one group per block and split-K make each block's code a short stream (conv5 3x3 b32,
# s8: ~1,840 FMAs, 30 KB), which the block runs for its n pixel tiles in turn; ~128 blocks.
# Lost (v25: conv5 3x3 b32 g32p256x1s8L7 258.7 us against g32p64x4s4's 160.6, conv4 3x3 b32
# 146.2 against 80.1, conv4 1x1 reduce b32 90.5 against 43.1)
_L = dict(group=32, pixels=256, groups=1, stage=32, regs=16)
TILES.update({
    "g32p256x1s8L7": Tile(**_L, splits=8, loops=7),
    "g32p256x1s8L4": Tile(**_L, splits=8, loops=4),
    "g32p256x1s4L7": Tile(**_L, splits=4, loops=7),
    "g32p256x1s8HL7": Tile(**_L, splits=8, loops=7, halo=True),
    "g32p256x1s4HL7": Tile(**_L, splits=4, loops=7, halo=True),
    "g32p256x1s4GL7": Tile(**_L, splits=4, loops=7, layout="groups"),
    "g32p256x1s2GL7": Tile(**_L, splits=2, loops=7, layout="groups"),
    "g32p256x1GL7": Tile(**_L, loops=7, layout="groups"),
    "g16p256x1s4L7": Tile(**{**_L, "group": 16}, splits=4, loops=7),
})

# batch-1 layers of small maps: one block holds all of a 14 x 14 map's pixels (224 threads, 7
# warps) on one channel group, so the warps of an SM walk one instruction stream (ncu of the batch-1
# records g16p32x2G / g32p64x1s4G / g32p64x1s4GH: 67-80% of the cycles between a warp's
# instructions wait on instruction fetch, with 2 warps per block and 0.3 waves; stop 33)
_B1 = dict(pixels=224, groups=1, stage=32, regs=16, layout="groups")
TILES.update({
    "g16p224x1G": Tile(group=16, **_B1),
    "g32p224x1G": Tile(group=32, **_B1),
    "g16p224x1s2G": Tile(group=16, **_B1, splits=2),
    "g32p224x1s2G": Tile(group=32, **_B1, splits=2),
    "g32p224x1s4G": Tile(group=32, **_B1, splits=4),
    "g32p224x1GH": Tile(group=32, **_B1, halo=True),
    "g32p224x1s2GH": Tile(group=32, **_B1, splits=2, halo=True),
    "g32p224x1s4GH": Tile(group=32, **_B1, splits=4, halo=True),
    "g16p224x1s2GH": Tile(group=16, **_B1, splits=2, halo=True),
    "g32p224x1s8G": Tile(group=32, **_B1, splits=8),
    "g32p224x1s16G": Tile(group=32, **_B1, splits=16),
    "g16p224x1s8G": Tile(group=16, **_B1, splits=8),
    "g32p224x1s8GH": Tile(group=32, **_B1, splits=8, halo=True),
    "g32p224x1s16GH": Tile(group=32, **_B1, splits=16, halo=True),
    "g16p256x1G": Tile(group=16, pixels=256, groups=1, stage=32, regs=16, layout="groups"),
    "g32p256x1s2G": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, layout="groups", splits=2),
    "g32p256x1s2GH": Tile(group=32, pixels=256, groups=1, stage=32, regs=16, layout="groups", splits=2, halo=True),
})

# batch-1 layers of 7 x 7 and 28 x 28 maps: 64-pixel blocks (a whole 7 x 7 map) with split-K 8, for
# more short instruction streams at once (conv5: 16 channel groups x 8 shares)
TILES.update({
    "g32p64x1s8G": Tile(group=32, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=8),
    "g32p64x1s8GH": Tile(group=32, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=8, halo=True),
    "g16p64x1s8G": Tile(group=16, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=8),
    "g16p64x1s8GH": Tile(group=16, pixels=64, groups=1, stage=64, regs=16, layout="groups", splits=8, halo=True),
})

# split-K shares added up by the blocks of a cluster in shared memory instead of a second kernel
# (names ending in C, `Tile.reduce`): every split-K tile of 2 to 8 shares, one pass over its pixels
TILES.update({f"{name}C": replace(tile, reduce="cluster") for name, tile in list(TILES.items())
              if 2 <= tile.splits <= MAX_CLUSTER and tile.loops == 1})

#: sums a thread may hold (`Tile.group` x `Tile.rows`): registers beyond leave ptxas to spill
MAX_SUMS = 128
#: static shared memory a kernel may use (ptxas refuses more without dynamic shared memory)
MAX_SHARED_BYTES = 48 * 1024


def halo_geometry(out_width: int, kernel_width: int, stride: int, dilation: int, pixels: int) -> tuple[int, int, int, int]:
    """A halo tile's block: (output rows, columns per row, segments per output row, staged input
    columns per output row). Maps at least `pixels` wide: one row, segments of `pixels` columns;
    narrower maps: as many whole rows as fit (14 x 14: 2 rows of 14 in 32 threads)."""
    rows, cols = (1, pixels) if out_width >= pixels else (pixels // out_width, out_width)
    return rows, cols, -(-out_width // cols), (cols - 1) * stride + (kernel_width - 1) * dilation + 1


def staged_rows(out_width: int, kernel_width: int, stride: int, dilation: int, tile: Tile) -> int:
    """Input pixels a stage of `tile` copies into shared memory (rows of its input tile)."""
    rows, _, _, per_row = halo_geometry(out_width, kernel_width, stride, dilation, tile.pixels)
    return rows * per_row if tile.halo else tile.pixels


def input_tile_shape(staged: int, tile: Tile) -> tuple[int, int]:
    """(rows, words per row) of the kernel's shared input tile: wide enough for the sums too,
    which reuse it after the last stage (so shared memory holds the larger of the two, not both)."""
    return max(staged, tile.pixels), max(tile.stage, tile.group) + ROW_PAD


def shared_bytes(out_width: int, kernel_shape, strides, dilations, tile: Tile) -> int:
    """Shared memory of `tile`'s kernel for a layer (its input tile, `emit`)."""
    rows, words = input_tile_shape(staged_rows(out_width, kernel_shape[1], strides[1], dilations[1], tile), tile)
    return 4 * rows * words


def register_cap(tile: Tile) -> int:
    """Registers for a piece compiled apart (`nvptx_build.assemble(max_registers=...)`, link mode
    "linked-capped", not the default: see `register_reuse.LINK_MODES`): its accumulators and input
    registers plus room for addresses and loads in flight, about what ptxas gives the same code
    joined into one kernel (122 with 32 accumulators and 16 inputs, 151 with 64 and 8); left alone,
    it gave the function apart 243 (g32p64x4G), halving the blocks per SM."""
    return min(255, -(-(tile.group + tile.regs + 80) // 8) * 8)


#: output pixels from which the batch-32-like tile wins (every H200 batch-32 layer measured has
#: 6,272 or more; every batch-1 layer 3,136 or fewer)
MANY_PIXELS = 4096


def default_tile(n_pixels: int) -> str:
    """The tile for a layer without a record: the one that won most layers of its kind on the H200
    (benchmarks/experiments/register_reuse-v3-coalesced-out-nvidia-h200.json)."""
    return "g32p64x4" if n_pixels >= MANY_PIXELS else "g32p32x8"


def _thread(tag: str, extent: int) -> tirx.IterVar:
    return tirx.IterVar(Range(0, extent), tirx.Var(tag.replace(".", "_"), "int32"), 1, tag)


def _ramp(base, lanes: int = 4):
    return tirx.Ramp(base, 1, lanes)


def _tree(index, lo: int, hi: int, body) -> tirx.Stmt | None:
    """`body(g)` for the g in [lo, hi) equal to `index`, as a binary tree of branches."""
    if hi - lo == 1:
        return body(lo)
    mid = (lo + hi) // 2
    left, right = _tree(index, lo, mid, body), _tree(index, mid, hi, body)
    if left is None and right is None:
        return None
    if left is None:
        return tirx.IfThenElse(index >= mid, right, None)
    if right is None:
        return tirx.IfThenElse(index < mid, left, None)
    return tirx.IfThenElse(index < mid, left, right)


def _stages(w: np.ndarray, stage: int, halo: bool = False, rows: int = 1, stride: int = 1,
            dilation: int = 1) -> list[tuple]:
    """(tap row, tap column, first channel, channels): the taps' channel ranges with a nonzero;
    with `halo`, the kernel rows' (tap column None: every column of the row, one stage); with
    `rows` > 1 (halo), the input rows' instead: (offset of the input row below the thread's first
    output row's first input row, None, first channel, channels), see `row_taps`."""
    kh_, kw_, cin, _ = w.shape
    if halo and rows > 1:
        offsets = sorted({p * stride + kh * dilation for p in range(rows) for kh in range(kh_)})
        return [(d, None, s0, min(stage, cin - s0)) for d in offsets for s0 in range(0, cin, stage)
                if any(np.any(w[kh, :, s0:s0 + stage]) for _, kh in row_taps(kh_, rows, stride, dilation, d))
                ] or [(0, None, 0, min(stage, cin))]
    columns = [None] if halo else range(kw_)
    return [(kh, kw, s0, min(stage, cin - s0)) for kh in range(kh_) for kw in columns
            for s0 in range(0, cin, stage) if np.any(_taps(w, kh, kw)[:, s0:s0 + stage])] or [(0, columns[0], 0, min(stage, cin))]


def row_taps(kernel_rows: int, rows: int, stride: int, dilation: int, offset: int) -> list[tuple[int, int]]:
    """(thread's output row p, kernel row kh) pairs that read input row `offset` (p * stride + kh *
    dilation) of a tile of `rows` output rows per thread."""
    return [(p, kh) for p in range(rows) for kh in range(kernel_rows) if p * stride + kh * dilation == offset]


def _taps(w: np.ndarray, kh: int, kw: int | None) -> np.ndarray:
    """The weights of tap (kh, kw) as (1, Cin, Cout), or of every tap of row kh (kw None)."""
    return w[kh] if kw is None else w[kh, kw][None]


def split_count(w: np.ndarray, tile: Tile) -> int:
    """Shares of split-K the kernel of `w` (HWIO) gets with `tile` (1: no split, no tail kernel)."""
    return len(_shares(_stages(w, tile.stage, tile.halo), w, tile.splits))


def _shares(stages: list, w: np.ndarray, splits: int) -> list[list]:
    """`stages` cut into min(`splits`, stages) contiguous non-empty shares of about equal nonzeros."""
    splits = max(1, min(splits, len(stages)))
    if splits == 1:
        return [stages]
    ends = np.cumsum([np.count_nonzero(_taps(w, kh, kw)[:, s0:s0 + width]) for kh, kw, s0, width in stages])
    cuts = [0]
    for z in range(1, splits):
        cut = int(np.searchsorted(ends, ends[-1] * z / splits, side="left")) + 1
        cuts.append(min(max(cut, cuts[-1] + 1), len(stages) - (splits - z)))
    cuts.append(len(stages))
    return [stages[a:b_] for a, b_ in zip(cuts, cuts[1:])]


def channel_blocks(cout: int, tile: Tile) -> int:
    """Blocks of `tile.groups` channel groups covering `cout` output channels (blockIdx.y)."""
    return -(-(-(-cout // tile.group)) // tile.groups)


def piece_bounds(n_blocks: int, n_pieces: int) -> list[int]:
    """The channel blocks of each of `n_pieces` pieces: piece i has [bounds[i], bounds[i + 1])."""
    n_pieces = max(1, min(n_pieces, n_blocks))
    return [round(i * n_blocks / n_pieces) for i in range(n_pieces + 1)]


def piece_plan(n_blocks: int, splits: int, n_pieces: int, cut_shares: bool = True) -> list[tuple[int, int, int, int]]:
    """(channel blocks [b0, b1), split-K shares [z0, z1)) of each piece, for about `n_pieces`:
    shares of the channel blocks, and where a split-K tile asks for more pieces than it has
    channel blocks, each block's shares of the stages cut too (ptxas's time grows faster than
    linearly with a piece's length: conv5 3x3 b32 has 4-8 channel blocks of 30,000-60,000 FMAs),
    unless not `cut_shares` (a cluster's blocks must all run the piece that holds its barriers)."""
    if n_pieces <= n_blocks or splits == 1 or not cut_shares:
        bounds = piece_bounds(n_blocks, n_pieces)
        return [(b0, b1, 0, splits) for b0, b1 in zip(bounds, bounds[1:])]
    z = piece_bounds(splits, -(-n_pieces // n_blocks))
    return [(cb, cb + 1, z0, z1) for cb in range(n_blocks) for z0, z1 in zip(z, z[1:])]


def pieces_for(fmas: int, cout: int, tile: Tile, per_piece: int | None = None, splits: int | None = None) -> int:
    """Pieces to compile code of `fmas` FMAs in (apart, in parallel; made one kernel): one per
    `per_piece` FMAs (default `FMAS_PER_PIECE`), at most one per channel block of the tile and
    split-K share (`splits`: the kernel's shares, `split_count`; default the tile's)."""
    return len(piece_plan(channel_blocks(cout, tile), splits or tile.splits, -(-fmas // (per_piece or FMAS_PER_PIECE)),
                          cut_shares=tile.reduce != "cluster"))


def parts_for(fmas: int) -> int:
    """Kernels to split code of `fmas` FMAs into (each at most `FMAS_PER_KERNEL`)."""
    return max(1, -(-fmas // FMAS_PER_KERNEL))


class PtxFmas:
    """A kernel's FMAs as PTX text (`emit`'s ``fma_code="ptx"``): one snippet per `ptx_marker`,
    which loads the thread's input words from its row of the shared input tile into registers
    ``%sx``, applies the nonzeros as FMAs with immediate weights into its sums ``%sa`` (registers
    LLVM never sees: zeroed in the prologue), or stores the sums into the tile for the epilogue.
    The same instructions LLVM emitted for the TIR FMAs, without compiling them through TVM and
    LLVM (`nvptx_build.splice`). ptxas gives some tiles more registers for them than for LLVM's
    code (conv3 1x1 reduce b32, g32p64x4G: 124 instead of 69); neither a register per load and
    per sum (LLVM's SSA form) nor starting each sum at its first FMA (zero addend) instead of
    zeroing them all first changed that (`benchmarks/experiments/register_reuse.md`, stop 29)."""

    def __init__(self, group: int, regs: int, row_words: int, rows: int = 1):
        self.group, self.row_bytes, self.xregs, self.sums = group, 4 * row_words, -(-regs // 4) * 4, group * rows
        self.snippets: list[str] = []

    def _marker(self, lines: list[str], row: tirx.PrimExpr) -> tirx.Stmt:
        # the marker's operand is the thread's row of the tile: %sd0 = tile + row * row_bytes
        head = [f"\tmov.b32 \t%sr0, {VALUE};", f"\tmul.wide.s32 \t%sd0, %sr0, {self.row_bytes};",
                "\tadd.s64 \t%sd0, %sd0, %sd1;"]
        self.snippets.append("\n".join(head + lines))
        return ptx_marker(len(self.snippets) - 1, row)

    def fmas(self, blocks: list[tuple[int, list[tuple[int, np.ndarray]]]], row: tirx.PrimExpr) -> tirx.Stmt | None:
        """The FMAs of `blocks`, (first word in the row, [(first sum, weights (words, group))])
        each (several sums where the words feed several output rows of a `Tile.rows` tile), on
        the thread's input row `row`; None where there are none."""
        lines = []
        for r0, subs in blocks:
            nonzeros = [(a0, sub, *np.nonzero(sub)) for a0, sub in subs]
            needed = sorted({int(kk) // 4 for _, _, k, _ in nonzeros for kk in k})
            for v in needed:  # only the float4s that hold a nonzero's input, once for every sum
                regs = ", ".join(f"%sx{4 * v + i}" for i in range(4))
                lines.append(f"\tld.shared.v4.f32 \t{{{regs}}}, [%sd0+{4 * (r0 + 4 * v)}];")
            for a0, sub, k, j in nonzeros:
                bits = np.ascontiguousarray(sub[k, j], dtype=np.float32).view(np.uint32)
                lines += [f"\tfma.rn.f32 \t%sa{a0 + jj}, %sx{kk}, 0f{int(b):08X}, %sa{a0 + jj};"
                          for kk, jj, b in zip(k, j, bits)]
        return self._marker(lines, row) if lines else None

    def zero_sums(self, row: tirx.PrimExpr) -> tirx.Stmt:
        """Every sum set to zero (again: a `Tile.loops` block's next pixel tile)."""
        return self._marker([f"\tmov.f32 \t%sa{j}, 0f00000000;" for j in range(self.sums)], row)

    def store_sums(self, row: tirx.PrimExpr, first: int = 0) -> tirx.Stmt:
        """The thread's sums `first`.. (group of them) into words 0..group-1 of its row `row` of the tile."""
        if self.group % 4:
            lines = [f"\tst.shared.f32 \t[%sd0+{4 * j}], %sa{first + j};" for j in range(self.group)]
        else:
            lines = [f"\tst.shared.v4.f32 \t[%sd0+{16 * q}], "
                     f"{{{', '.join(f'%sa{first + 4 * q + i}' for i in range(4))}}};" for q in range(self.group // 4)]
        return self._marker(lines, row)

    def cluster_sync(self, row: tirx.PrimExpr) -> tirx.Stmt:
        """A barrier of every thread of the cluster: shared-memory stores before it are seen by
        the cluster's other blocks after it (release / acquire)."""
        return self._marker(["\tbarrier.cluster.arrive.aligned;", "\tbarrier.cluster.wait.aligned;"],
                            row)

    def cluster_sum(self, offset: tirx.PrimExpr, blocks: int, words: int) -> tirx.Stmt:
        """The `words` (1 or 4) floats at byte `offset` of the tile summed over the cluster's
        `blocks` blocks (rank 0 first, whatever block runs it), written back there in this block."""
        vec, get = (".v4", lambda r: "{" + ", ".join(f"%cv{r + k}" for k in range(4)) + "}") if words == 4 else \
            ("", lambda r: f"%cv{r}")
        lines = ["\t{", "\t.reg .b64 \t%cq<2>;", f"\t.reg .f32 \t%cv<{2 * words}>;",
                 f"\tmov.b32 \t%sr0, {VALUE};", "\tcvt.s64.s32 \t%cq0, %sr0;", "\tadd.s64 \t%cq0, %cq0, %sd1;"]
        for rank in range(blocks):
            lines += [f"\tmapa.shared::cluster.u64 \t%cq1, %cq0, {rank};",
                      f"\tld.shared::cluster{vec}.f32 \t{get(words if rank else 0)}, [%cq1];"]
            lines += [f"\tadd.f32 \t%cv{k}, %cv{k}, %cv{words + k};" for k in range(words) if rank]
        self.snippets.append("\n".join(lines + [f"\tst.shared{vec}.f32 \t[%cq0], {get(0)};", "\t}"]))
        return ptx_marker(len(self.snippets) - 1, offset)

    def prologue(self) -> str:
        decls = [f"\t.reg .f32 \t%sa<{self.sums}>;", f"\t.reg .f32 \t%sx<{self.xregs}>;", "\t.reg .b64 \t%sd<2>;",
                 "\t.reg .b32 \t%sr<1>;", f"\tmov.u64 \t%sd1, {SHARED};"]
        return "\n".join(decls + [f"\tmov.f32 \t%sa{j}, 0f00000000;" for j in range(self.sums)])


def emit(w: np.ndarray, input_shape, output_hw, strides, pads, tile: Tile, bias: bool = False,
         activation: str | None = None, llvm: bool = True, parts: int | None = None,
         dilations=(1, 1), piece: tuple | None = None, fma_code: str = "ptx") -> tirx.PrimFunc:
    """The kernel computing ``out = act(conv2d(x, w) + bias)`` for this `w` (HWIO, or (Cin, Cout)
    for a 1x1 kernel), as TIR.

    A KxK kernel is a sum of 1x1 convolutions of shifted inputs: each stage stages one tap's
    channel range (skipped where the kernel has no nonzero), so the block copies the input once
    per tap (from L1/L2 for neighbouring pixels) and each thread applies that tap's nonzeros.
    `llvm`: for LLVM's NVPTX backend; else the host side for TVM's CUDA build (`nvptx_build`): the
    same kernels, launches and arguments with TVM's barrier and without the FMAs (that C code is
    printed, never compiled: the module runs the NVPTX build's cubin; 3 of 11 s at 14,746 FMAs).
    `parts`: kernels launched one after the other, each for a share of the output channels
    (default `parts_for` the number of nonzeros).
    `piece`: one piece of the code to compile apart (`nvptx_build.compile_nvptx_pieces` joins
    them into one kernel): ("part", i, n), the i-th of n shares of the channel blocks, over the
    whole grid (the other blocks skip it), or ("tail",), the kernel that adds up split-K shares.
    `fma_code` (with `llvm`): "ptx" (default) writes the loads into registers and the FMAs as PTX
    text that `nvptx_build` splices into LLVM's output at markers (`PtxFmas`), so TVM and LLVM
    compile only the staging and the epilogue; "tir" has them compile every FMA (2.5x the compile
    time on the 2-core machine, same code: `benchmarks/experiments/register_reuse.md`)."""
    if fma_code not in ("ptx", "tir"):
        raise ValueError(f"fma_code must be 'ptx' or 'tir', got {fma_code!r}")
    n, h, wd, cin = input_shape
    oh_, ow_ = output_hw
    w = np.asarray(w, np.float32)
    if w.ndim == 2:
        w = w[None, None]
    kh_, kw_, _, cout = w.shape
    tile.validate()
    g_, tp, ng, st, rc, prefetch = tile.group, tile.pixels, tile.groups, tile.stage, tile.regs, tile.prefetch
    n_groups = -(-cout // g_)
    n_pix = n * oh_ * ow_
    vec = 4 if cin % 4 == 0 else 1

    x = tirx.decl_buffer(tuple(input_shape), F32, "x")
    out = tirx.decl_buffer((n, oh_, ow_, cout), F32, "out")
    b = tirx.decl_buffer((cout,), F32, "bias") if bias else None

    sh, sw = strides
    dh, dw = dilations
    rows_ = tile.rows
    stages = _stages(w, st, tile.halo, rows_, sh, dh)
    shares = _shares(stages, w, tile.splits)
    # halo tiles: blocks over (image, output row, segment of `tp` columns); a stage holds the
    # segment's input columns with the halo of the kernel's width (`staged` rows of `xs`)
    block_rows, cols, segments, halo_cols = halo_geometry(ow_, kw_, sw, dw, tp)
    staged = staged_rows(ow_, kw_, sw, dw, tile)
    splits = len(shares)
    # split-K: each blockIdx.z sums its share of the stages into ws[z]; a last kernel adds them up
    # (or the shares' blocks form a cluster and add them up in shared memory: `Tile.reduce`)
    cluster = splits > 1 and tile.reduce == "cluster"
    ws = tirx.decl_buffer((splits, n_pix, cout), F32, "ws") if splits > 1 and not cluster else None

    n_blocks = channel_blocks(cout, tile)
    tile_rows, row_words = input_tile_shape(staged, tile)
    ptx = PtxFmas(g_, rc, row_words, rows_) if llvm and fma_code == "ptx" else None
    if cluster and llvm and ptx is None:
        raise ValueError("a cluster reduction (Tile.reduce) is PTX text: it needs fma_code='ptx'")
    # `Tile.rows`: each block holds `rows_` output rows per thread row, within one image
    chunks = -(-oh_ // (block_rows * rows_))

    def taps_of(stage) -> list[tuple[int, int]]:
        """(sums' output row p, kernel row kh) that read `stage`'s input (one pair unless `rows_` > 1)."""
        return [(0, stage[0])] if rows_ == 1 else row_taps(kh_, rows_, sh, dh, stage[0])

    def group_columns(block: np.ndarray, gi: int) -> np.ndarray:
        return block[:, gi * g_:(gi + 1) * g_] if gi < n_groups else block[:, :0]

    def launch(b0: int, b1: int, whole_grid: bool = False, z0: int = 0, z1: int | None = None) -> tirx.Stmt:
        """One kernel: the channel blocks [b0, b1) (blocks of `groups` groups) of every pixel;
        `whole_grid`: launched over every channel block and split-K share, those outside [b0, b1)
        and shares [z0, z1) doing nothing."""
        z1 = splits if z1 is None else z1
        # also holds the sums at the end (a 64-channel group of 128 pixels needs 34.8 KB of them)
        xs = tirx.decl_buffer((tile_rows, row_words), F32, "xs", scope="shared")
        acc = tirx.decl_buffer((g_ * rows_,), F32, "acc", scope="local")
        xr = tirx.decl_buffer((rc,), F32, "xr", scope="local")

        if not tile.halo:
            n_tiles = -(-n_pix // tp)
        else:
            n_tiles = (-(-(n * oh_) // block_rows) if rows_ == 1 else n * chunks) * segments
        # pixel tiles: one per block, or `Tile.loops` of them in turn (loop variable `t`)
        bx = _thread("blockIdx.x", -(-n_tiles // tile.loops))
        by = _thread("blockIdx.y", n_blocks if whole_grid else b1 - b0)
        t = tirx.Var("t", "int32")
        tile_x = bx.var if tile.loops == 1 else bx.var * tile.loops + t
        bz = _thread("blockIdx.z", splits)
        tx, ty = _thread("threadIdx.x", tp), _thread("threadIdx.y", ng)
        block = by.var if whole_grid else b0 + by.var  # the channel block
        group = block * ng + ty.var
        if tile.halo:  # the block's first column, and its first output row (flattened n * OH + oh)
            col0 = tirx.floormod(tile_x, segments) * cols
            if rows_ == 1:
                row0 = tirx.floordiv(tile_x, segments) * block_rows
            else:  # or its image and its first row in the image
                image = tirx.floordiv(tile_x, segments * chunks)
                local0 = tirx.floormod(tirx.floordiv(tile_x, segments), chunks) * (block_rows * rows_)

        def thread_row(rr, p: int = 0):
            """(flattened output row of the block's thread row rr and its p-th row, whether it exists)."""
            if rows_ == 1:
                return row0 + rr, row0 + rr < n * oh_
            local = local0 + rr * rows_ + p
            return image * oh_ + local, local < oh_

        def block_pixel(r, p: int = 0):
            """(flattened output pixel of the block's r-th pixel (its p-th row), whether it exists)."""
            if not tile.halo:
                return tile_x * tp + r, tile_x * tp + r < n_pix
            rr, cc = (0, r) if cols == tp else (tirx.floordiv(r, cols), tirx.floormod(r, cols))
            orow, exists = thread_row(rr, p)
            return orow * ow_ + col0 + cc, tirx.all(rr < block_rows, exists, col0 + cc < ow_)

        def halo_row(kw: int):
            """This thread's input at tap column kw: its row of the staged tile (the idle threads
            past a block's whole rows read within the last row: in bounds, never stored)."""
            if cols == tp:
                return tx.var * sw + kw * dw
            rr = tirx.min(tirx.floordiv(tx.var, cols), block_rows - 1)
            return rr * halo_cols + tirx.floormod(tx.var, cols) * sw + kw * dw
        zero = tirx.const(0.0, F32)
        # TVM's own barrier does not survive its NVPTX codegen (see tvm_sparseconv/nvptx_build.py)
        if llvm:
            sync = llvm_barrier(tp * ng)
        else:
            sync = tirx.Evaluate(tirx.call_intrin("int32", "tirx.tvm_storage_sync", StringImm("shared")))

        threads = tp * ng
        copies = max(-(-staged * -(-width // vec) // threads) for *_, width in stages)
        pf = tirx.decl_buffer((copies * vec,), F32, "pf", scope="local")  # the next stage, in flight

        def copy_slots(stage):
            """Per copy slot of `stage`: (in range, shared row, vector index, clamped source, inside)."""
            kh, kw, s0, width = stage
            per_row = -(-width // vec)
            for it in range(copies):
                i = it * threads + ty.var * tp + tx.var
                row, q = tirx.floordiv(i, per_row), tirx.floormod(i, per_row)
                if tile.halo:
                    row_ = tirx.min(row, staged - 1)
                    rr, col = (0, row_) if block_rows == 1 else (tirx.floordiv(row_, halo_cols), tirx.floormod(row_, halo_cols))
                    orow, exists = thread_row(rr)  # with `rows_` > 1 the stage's `kh` is an input-row offset
                    src, inside = halo_input(tirx.min(orow, n * oh_ - 1), col0 * sw + col, (h, wd), output_hw,
                                             strides, pads, dilations, kh, offset=None if rows_ == 1 else kh)
                    inside = tirx.all(inside, exists)
                else:
                    src, inside = tap_input(tile_x * tp + tirx.min(row, tp - 1), n_pix, (h, wd), output_hw, strides,
                                            pads, dilations, kh, kw)
                ch = s0 + q * vec
                if vec == 1:
                    inside = tirx.all(inside, ch < cin)
                    ch = tirx.min(ch, cin - 1)
                yield it, i < staged * per_row, row, q, src, ch, inside

        def fetch(stage):
            """Loads of `stage` into `pf`: always from inside x (clamped), then zero where outside.

            Two statements, not Select(inside, load, 0): TVM simplifies a Select's true value under
            its condition, which dropped the clamp of scalar copies, and the load (executed either
            way) then read outside x (compute-sanitizer: 5,400 bytes before it, conv1 7x7, 3 channels)."""
            out_ = []
            for it, _, _, _, src, ch, inside in copy_slots(stage):
                if vec == 4:
                    idx, lanes = [_ramp(it * 4)], (lambda v: tirx.Broadcast(v, 4))  # noqa: E731
                    load = tirx.BufferLoad(x, [*src, _ramp(ch)])
                else:
                    idx, lanes = [it], (lambda v: v)  # noqa: E731
                    load = x[(*src, ch)]
                out_.append(tirx.BufferStore(pf, load, idx))
                out_.append(tirx.BufferStore(pf, tirx.Select(lanes(inside), tirx.BufferLoad(pf, idx), lanes(zero)), idx))
            return out_

        def deposit(stage):
            """`pf` (holding `stage`) into the shared tile."""
            out_ = []
            for it, used, row, q, *_ in copy_slots(stage):
                if vec == 4:
                    st_ = tirx.BufferStore(xs, tirx.BufferLoad(pf, [_ramp(it * 4)]), [row, _ramp(q * 4)])
                else:
                    st_ = tirx.BufferStore(xs, pf[it], [row, q])
                out_.append(tirx.IfThenElse(used, st_, None))
            return out_

        def fmas(gi: int, subs: list[tuple[int, np.ndarray]]) -> tirx.Stmt | None:
            """Group gi's FMAs over the input channels held in `xr`: per (first sum, weights
            (channels, Cout)) of `subs`."""
            if not llvm:
                return None  # the host side's copy of the kernel (see `emit`)
            stores = []
            for a0, block in subs:
                sub = group_columns(block, gi)
                stores += [tirx.BufferStore(acc, acc[a0 + int(jj)] + xr[int(kk)] * tirx.const(float(sub[kk, jj]), F32),
                                            [a0 + int(jj)]) for kk, jj in zip(*np.nonzero(sub))]
            if not stores:
                return None
            return stores[0] if len(stores) == 1 else tirx.SeqStmt(stores)  # TIR refuses a SeqStmt of one

        def pipeline(gi: int | None, share: list) -> list[tirx.Stmt]:
            """The stages of `share`: for group `gi` alone, or (None) for every group behind
            branches per step.

            Software pipeline: stage k+1's loads are issued before stage k's FMAs (`prefetch`
            "start") or halfway through them ("middle"), stored after them."""
            if not llvm:  # the host side needs the kernel's arguments and launch, not every stage
                share = share[:1]
            code = fetch(share[0])
            for k, stage in enumerate(share):
                _, kw_stage, s0, width = stage
                taps = taps_of(stage)
                code += deposit(stage)
                code.append(sync)
                ahead = fetch(share[k + 1]) if k + 1 < len(share) else []
                before = len(code)
                for kw in range(kw_) if kw_stage is None else [kw_stage]:
                    srow = halo_row(kw) if kw_stage is None else tx.var  # this tap's input in xs
                    # per `rc` input channels: (first word, [(first sum, weights (channels, Cout))])
                    blocks = [(r0, [(p * g_, w[kh, kw, s0 + r0:s0 + min(r0 + rc, width)]) for p, kh in taps])
                              for r0 in range(0, width, rc)]
                    if ptx is not None:  # the FMAs as PTX text at markers (no xr, no acc in the TIR)
                        def columns(subs, g):
                            return [(a0, group_columns(block, g)) for a0, block in subs]
                        if gi is None:
                            steps = [_tree(group, b0 * ng, min(b1 * ng, n_groups),
                                           lambda g, r0=r0, subs=subs: ptx.fmas([(r0, columns(subs, g))], srow))
                                     for r0, subs in blocks]
                        else:  # one marker, or two where the next stage's loads go between them
                            half = len(blocks) // 2 if prefetch == "middle" else 0
                            steps = [ptx.fmas([(r0, columns(subs, gi)) for r0, subs in part], srow)
                                     for part in (blocks[:half], blocks[half:]) if part]
                        code += [step for step in steps if step is not None]
                        continue
                    for r0, subs in blocks:
                        chans = min(rc, width - r0)
                        step = (_tree(group, b0 * ng, min(b1 * ng, n_groups), lambda g, subs=subs: fmas(g, subs))
                                if gi is None else fmas(gi, subs))
                        if step is None:
                            continue
                        code += [tirx.BufferStore(xr, tirx.BufferLoad(xs, [srow, _ramp(r0 + v)]), [_ramp(v)])
                                 for v in range(0, -(-chans // 4) * 4, 4)]
                        code.append(step)
                middle = before + (len(code) - before) // 2 if prefetch == "middle" else before
                code[middle:middle] = ahead
                code.append(sync)
            return code

        if ptx is None:
            allocs = [tirx.AllocBuffer(xs), tirx.AllocBuffer(acc), tirx.AllocBuffer(xr), tirx.AllocBuffer(pf)]
            body = [tirx.BufferStore(acc, zero, [j]) for j in range(g_ * rows_)]
        else:  # the sums are PTX registers (`PtxFmas`), zeroed in its prologue
            allocs = [tirx.AllocBuffer(xs), tirx.AllocBuffer(pf)]
            body = [ptx.zero_sums(tx.var)] if tile.loops > 1 else []
        # A block's share of the stages (block-uniform: blockIdx.z), one branch per share.
        def shared_out(gi: int | None) -> tirx.Stmt:
            return _tree(bz.var, z0, z1, lambda z: tirx.SeqStmt(pipeline(gi, shares[z])))

        if tile.layout == "steps":
            body.append(shared_out(None))
        else:
            # One branch per group holding its whole pipeline: a warp's code is one sequential run
            # (instruction prefetch), not short runs between the other groups' code. Every branch
            # (also a block's idle groups past Cout) meets the same barriers (bar.sync with a count).
            body.append(_tree(group, b0 * ng, b1 * ng, shared_out))

        # Epilogue: bias and activation in registers; then, one group of the block at a time, the
        # sums go through shared memory so that the stores to `out` are whole rows of G channels per
        # pixel (coalesced float4) instead of one lane per pixel row (32 lines per store).
        def finish(value, j):
            co = tirx.min(group * g_ + j, cout - 1)  # clamped: a partial last group reads no bias past the end
            return activate(value + b[co] if b is not None else value, activation)

        ovec = 4 if cout % 4 == 0 and g_ % 4 == 0 else 1
        per_pixel = g_ // ovec
        rounds = -(-tp * per_pixel // threads)

        def tile_item(i, pr: int, gi: int):
            """Item `i` of the block's sums staged in `xs` for group `gi`, row `pr` (`ovec` channels of
            one pixel): (its row and first word in `xs`, its output pixel, whether that exists, its
            first channel, its channel index (a ramp for float4), its value)."""
            row, q = tirx.floordiv(i, per_pixel), tirx.floormod(i, per_pixel)
            p, exists = block_pixel(row, pr)
            co = (block * ng + gi) * g_ + q * ovec
            value = tirx.BufferLoad(xs, [row, _ramp(q * 4)] if ovec == 4 else [row, q])
            return row, q * ovec, p, exists, co, (_ramp(co) if ovec == 4 else co), value

        def cluster_out(pr: int, gi: int) -> list[tirx.Stmt]:
            """`Tile.reduce` "cluster": block z of the cluster (the tile's split-K shares) owns the
            z-th slice of the tile's sums (rows of `xs`, raw); once every block has stored its
            share's sums, it adds up its slice over the blocks' `xs` (DSMEM, in block order: the
            result does not depend on timing), then bias, activation and the store to `out`.
            The second cluster barrier keeps each block's `xs` alive until the others have read it."""
            items = tp * per_pixel
            chunk = -(-items // splits)
            code = [ptx.cluster_sync(tx.var)] if llvm else []
            for it in range(-(-chunk // threads)):
                mine = it * threads + ty.var * tp + tx.var
                i = bz.var * chunk + mine
                row, word, p, exists, co, co_idx, total = tile_item(i, pr, gi)
                if b is not None:
                    total = total + tirx.BufferLoad(b, [co_idx])
                store = tirx.BufferStore(out, activate(total, activation, ovec), [*output_pixel(p, output_hw), co_idx])
                steps = ([ptx.cluster_sum(4 * (row * row_words + word), splits, ovec)] if llvm else []) + [store]
                code.append(tirx.IfThenElse(tirx.all(mine < chunk, i < items, exists, co < cout),
                                             steps[0] if len(steps) == 1 else tirx.SeqStmt(steps), None))
            return code + ([ptx.cluster_sync(tx.var)] if llvm else [])
        # the sums go into the input tile, free by now (the last stage ended with a barrier): per
        # output row of the thread (`Tile.rows`), per group of the block
        for pr, gi in ((pr, gi) for pr in range(rows_) for gi in range(ng)):
            a0 = pr * g_  # the row's first sum
            if ptx is None:
                sums = [tirx.BufferStore(xs, acc[a0 + j] if ws is not None or cluster else finish(acc[a0 + j], j),
                                         [tx.var, j])
                        for j in range(g_)]
            else:  # the PTX sums stored raw, then bias and activation applied in the tile
                sums = [ptx.store_sums(tx.var, a0)]
                if ws is None and not cluster and (b is not None or activation):
                    sums += [tirx.BufferStore(xs, finish(xs[tx.var, j], j), [tx.var, j]) for j in range(g_)]
            body.append(tirx.IfThenElse(ty.var == gi, sums[0] if len(sums) == 1 else tirx.SeqStmt(sums), None))
            body.append(sync)
            if cluster:
                body += cluster_out(pr, gi)
            else:
                for it in range(rounds):
                    i = it * threads + ty.var * tp + tx.var
                    _, _, p, exists, co, co_idx, value = tile_item(i, pr, gi)
                    store = (tirx.BufferStore(ws, value, [bz.var, p, co_idx]) if ws is not None
                             else tirx.BufferStore(out, value, [*output_pixel(p, output_hw), co_idx]))
                    body.append(tirx.IfThenElse(tirx.all(i < tp * per_pixel, exists, co < cout), store, None))
            body.append(sync)

        if tile.loops == 1:
            stmt = tirx.SeqStmt(allocs + body)
        else:  # the block's tiles in turn (the last block's may end early: block-uniform)
            each = tirx.IfThenElse(tile_x < n_tiles, tirx.SeqStmt(body), None)
            stmt = tirx.SeqStmt(allocs + [tirx.For(t, 0, tile.loops, tirx.ForKind.SERIAL, each)])
        if whole_grid:  # block-uniform: every barrier is met by all of a block's threads or none
            inside = [by.var >= b0, by.var < b1] + ([bz.var >= z0, bz.var < z1] if (z0, z1) != (0, splits) else [])
            stmt = tirx.IfThenElse(tirx.all(*inside), stmt, None)
        for iv in (ty, tx, bz, by, bx):
            stmt = tirx.AttrStmt(iv, "thread_extent", iv.dom.extent, stmt)
        return stmt

    def reduce_shares() -> tirx.Stmt:
        """The last kernel of a split-K tile: out = act(sum over z of ws[z] + bias), float4 per thread."""
        rvec = 4 if cout % 4 == 0 else 1
        per_pixel = cout // rvec
        threads = 256
        rx, rt = _thread("blockIdx.x", -(-n_pix * per_pixel // threads)), _thread("threadIdx.x", threads)
        i = rx.var * threads + rt.var
        p, co = tirx.floordiv(i, per_pixel), tirx.floormod(i, per_pixel) * rvec
        idx = _ramp(co, rvec) if rvec > 1 else co
        total = tirx.BufferLoad(ws, [0, p, idx])
        for z in range(1, splits):
            total = total + tirx.BufferLoad(ws, [z, p, idx])
        if b is not None:
            total = total + tirx.BufferLoad(b, [idx])
        store = tirx.BufferStore(out, activate(total, activation, rvec), [*output_pixel(p, output_hw), idx])
        stmt = tirx.IfThenElse(p < n_pix, store, None)
        for iv in (rt, rx):
            stmt = tirx.AttrStmt(iv, "thread_extent", iv.dom.extent, stmt)
        return stmt

    # Very long code: kernels launched one after the other (`parts`), or pieces compiled apart
    # and joined into one kernel (`piece`, see nvptx_build.compile_nvptx_pieces).
    if piece is None:
        bounds = piece_bounds(n_blocks, parts or parts_for(int(np.count_nonzero(w))))
        launches = [launch(b0, b1) for b0, b1 in zip(bounds, bounds[1:])]
        tail = [reduce_shares()] if ws is not None else []
    elif piece[0] == "part":
        _, i, n_pieces = piece
        plan = piece_plan(n_blocks, splits, n_pieces, cut_shares=not cluster)
        if len(plan) != n_pieces:
            raise ValueError(f"{n_pieces} pieces asked, but this kernel's {n_blocks} channel blocks x {splits} shares "
                             f"make {len(plan)} (`pieces_for` with the kernel's `split_count`)")
        b0, b1, z0, z1 = plan[i]
        launches, tail = [launch(b0, b1, whole_grid=True, z0=z0, z1=z1)], []
    elif piece[0] == "tail" and ws is not None:  # (a cluster reduction has no tail)
        launches, tail = [], [reduce_shares()]
    else:
        raise ValueError(f"unknown piece {piece!r} (a tail exists only for split-K tiles)")
    launches += tail
    if ws is not None:
        # the workspace: TVM's per-call device allocation (TVMBackendAllocWorkspace, pooled)
        launches = [tirx.AllocBuffer(ws), *launches]
    stmt = launches[0] if len(launches) == 1 else tirx.SeqStmt(launches)
    params = [x] + ([b] if b is not None else []) + [out]
    func = tirx.PrimFunc(params, stmt).with_attr({"global_symbol": FUNCTION_NAME, "tirx.noalias": True})
    if ptx is not None and ptx.snippets:
        func = with_splices(func, ptx.snippets, ptx.prologue(), 4 * tile_rows * row_words,
                            cluster=(1, 1, splits) if cluster else None)
    return func
