"""Algorithm "register-reuse" (CUDA, any kernel size): the kernel's pattern and values compiled into the code.

The other algorithms read the kernel as data (an index and a load per multiply-add: at most 25% of
the fp32 peak). Here every nonzero is one FMA with its input in a register, its weight an
immediate and its sum in a register (`schedules/cuda_register_reuse.py` emits the kernel for a
`Tile`: its staging and epilogue as TIR, its FMAs as PTX text; `tvm_sparseconv/nvptx_build.py`
builds the TIR through LLVM's NVPTX backend, since nvcc cannot compile straight-line code of this
size in reasonable time, and splices the FMAs into its PTX). Measured in
`benchmarks/experiments/register_reuse.md`.

It has no TE definition and no MetaSchedule design space: the code depends on the kernel's values,
so it is generated per kernel (`generate`), and what a "record" keeps is the tile for a layer shape
(`tuning_logs/<device>/register_reuse.json`, from `benchmarks/experiments/register_reuse.py
--record`), which applies to any kernel of that shape. The compiled function's arguments are x,
[bias], out: no weight arrays. `compile()` takes it where its record (time scaled to the kernel's
nonzeros) beats the scheduled algorithms' records of the layer (`build.build_layer`).
"""

from __future__ import annotations

import functools

import numpy as np
from tvm import tirx

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from .base import GeneratedAlgorithm

#: code size budget (compile <= 30 s on the 2-core machine): layers whose kernel may hold more
#: nonzeros (ELL width x output channels) are not offered. Long code is compiled in pieces in
#: parallel, at most one per channel block and split-K share of the tile
#: (`cuda_register_reuse.piece_plan`). Since the FMAs reach the PTX as text (`emit`'s `fma_code`),
#: compile() on the 2-core znver4 takes at most 24.4 s for every layer of the 160,000 budget before
#: (`benchmarks/experiments/compile_time-cpu-znver4-2cores-cuda-ptx-fmas.json`; 38.1 s before),
#: and 27.0 s for conv5 1x1 proj s2 b32 (209,715 FMAs, 270,336 possible, g32p64x4G linked), 24.9 s
#: for conv5 3x3 b32 (235,930, 270,336 possible, g32p64x4s4; `compile_time-cpu-znver4-2cores-cuda-conv5.json`)
MAX_UNROLLED_FMAS = 280_000
#: KxK kernels above this many possible FMAs only with the "steps" code layout: the "groups"
#: layout repeats the staging code (tap bounds, clamps) in each group's branch, which TVM and LLVM
#: still compile: conv5 3x3 b32 with g32p64x4s4G took 42.9 s, with g32p64x4s4 26.4 s
#: (`register_reuse-v22-conv5-compile-cpu-znver4-2cores.json`)
MAX_GROUPS_LAYOUT_KXK_FMAS = 160_000
#: up to this many possible FMAs the pieces are joined into one PTX module (fastest at run time);
#: above, linked as objects compiled apart (ptxas would take too long on the whole; the calls cost
#: at run time: `nvptx_build.compile_nvptx_pieces`)
MAX_JOINED_FMAS = 72_000
#: and no piece longer than this (a tile with few channel blocks gives few, long pieces; ptxas's
#: time grows faster than linearly with a function's length): conv4 3x3 in one piece of 69,632
#: possible (58,982 FMAs) compiles in 26.5 s
MAX_FMAS_PER_PIECE = 70_000
#: registers of an SM (and at most of a block) on sm_90
REGISTERS_PER_SM = 65_536


#: how `RegisterReuse.build` puts pieces together: by the budget, or forced (experiments);
#: "linked-capped": linked with a register cap on the pieces (`cuda_register_reuse.register_cap`):
#: H200, 2026-12-02 (register_reuse-v13-pieces-*.json and the network runs of that day): 139.5 ->
#: 95.0 us on conv5 1x1 reduce_first b32 with g32p32x8G (joined 81.7), but slower on the layers
#: whose records link (conv5 1x1 expand b32 70.8 -> 106.9, conv4 1x1 proj s2 103.0 -> 123.7), so
#: not the default
LINK_MODES = ("auto", "joined", "linked", "linked-capped")


class RegisterReuse(GeneratedAlgorithm):
    """One FMA per nonzero in straight-line code, per thread's pixel and group of output channels."""

    name = "register-reuse"
    emitter = "cuda_register_reuse"

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        return target_kind == "cuda" and wl.ell_width * wl.out_channels <= MAX_UNROLLED_FMAS

    def default_tile(self, wl: ConvWorkload) -> str:
        from ..schedules.cuda_register_reuse import default_tile

        return default_tile(int(np.prod(wl.output_shape[:3])))

    @staticmethod
    def _pieces(fmas: int, wl: ConvWorkload, tile, apart: bool | None = None,
                splits: int | None = None) -> tuple[int, bool]:
        """(pieces, linked apart) for code of `fmas` FMAs in layer `wl` with `tile` (`apart`: by
        the budget where None; `splits`: the kernel's split-K shares, default the tile's)."""
        from ..schedules.cuda_register_reuse import FMAS_PER_LINKED_PIECE, pieces_for

        apart = wl.ell_width * wl.out_channels * tile.rows > MAX_JOINED_FMAS if apart is None else apart
        return pieces_for(fmas, wl.out_channels, tile, FMAS_PER_LINKED_PIECE if apart else None, splits), apart

    def fits(self, wl: ConvWorkload, tile) -> bool:
        from ..schedules.cuda_register_reuse import MAX_SHARED_BYTES, MAX_SUMS, shared_bytes

        # the code holds each nonzero once per output row of a thread (`Tile.rows`)
        possible = wl.ell_width * wl.out_channels * tile.rows
        kxk = tuple(wl.kernel_shape[:2]) != (1, 1)
        if kxk and tile.layout == "groups" and possible > MAX_GROUPS_LAYOUT_KXK_FMAS:
            return False
        if tile.group * tile.rows > MAX_SUMS:
            return False
        pieces, apart = self._pieces(possible, wl, tile)
        # a block must get its registers: ptxas may give up to 255 where the tile has no cap or
        # the pieces are linked apart (their cap is ptxas's); 512 threads x 255 cannot launch
        registers = 255 if apart or not tile.registers else tile.registers
        if tile.pixels * tile.groups * registers > REGISTERS_PER_SM:
            return False
        return (possible <= MAX_UNROLLED_FMAS and possible <= MAX_FMAS_PER_PIECE * pieces
                and shared_bytes(wl.output_hw[1], wl.kernel_shape, wl.strides, wl.dilations, tile) <= MAX_SHARED_BYTES)

    def recipe(self, kernel: SparseKernel, wl: ConvWorkload, tile, llvm: bool = True, **options):
        """`generate` as a picklable callable (for compiling pieces in child processes); `options`
        go to the emitter (`parts`, `piece`)."""
        from ..schedules.cuda_register_reuse import emit

        return functools.partial(emit, np.asarray(kernel.to_dense(), np.float32), wl.input_shape, wl.output_hw,
                                 wl.strides, wl.pads, tile, bias=wl.has_bias, activation=wl.activation, llvm=llvm,
                                 dilations=wl.dilations, **options)

    def generate(self, kernel: SparseKernel, wl: ConvWorkload, tile, llvm: bool = True, **options) -> tirx.PrimFunc:
        """The kernel for `kernel` in layer `wl` with `tile` (`llvm`: for the NVPTX backend)."""
        return self.recipe(kernel, wl, tile, llvm, **options)()

    @staticmethod
    def ptxas_options(tile, opt_level: int | None = None) -> dict:
        """`nvptx_build.assemble`'s options for `tile`'s kernel: its register cap, and ptxas's `-O`
        where given (experiments; else `nvptx_build.PTXAS_OPT_LEVEL`)."""
        return {"kernel_registers": tile.registers or None, **({} if opt_level is None else {"opt_level": opt_level})}

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target=None, link: str = "auto",
              ptxas_opt: int | None = None, fma_code: str = "ptx"):
        """The compiled module: one kernel, its code compiled in pieces in parallel where long
        (`cuda_register_reuse.pieces_for`; joined, or linked apart above `MAX_JOINED_FMAS`
        possible), then (split-K tiles) the kernel adding up the shares, unless the tile adds them up in
        a thread-block cluster (`Tile.reduce`). `link` (experiments):
        "joined" or "linked" overrides that choice, "linked-capped" links with a register cap
        (`LINK_MODES`); `ptxas_opt` (experiments) ptxas's `-O` instead of `nvptx_build.PTXAS_OPT_LEVEL`;
        `fma_code` (experiments): how the FMAs reach the PTX (`cuda_register_reuse.emit`).
        The tile's register cap, if any, goes to ptxas."""
        from ..nvptx_build import compile_nvptx, compile_nvptx_pieces
        from ..schedules.cuda_register_reuse import FUNCTION_NAME, register_cap, split_count

        if link not in LINK_MODES:
            raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
        arch = str(target.attrs.get("arch", "sm_90")) if target is not None else "sm_90"
        ptxas = self.ptxas_options(tile, ptxas_opt)
        shares = split_count(np.asarray(kernel.to_dense(), np.float32), tile)
        n, apart = self._pieces(int(kernel.nnz) * tile.rows, wl, tile, None if link == "auto" else link != "joined",
                                shares)
        if n == 1:
            return compile_nvptx(lambda llvm: self.generate(kernel, wl, tile, llvm=llvm, fma_code=fma_code), arch=arch,
                                 **ptxas)
        pieces = [self.recipe(kernel, wl, tile, piece=("part", i, n), fma_code=fma_code) for i in range(n)]
        tail = self.recipe(kernel, wl, tile, piece=("tail",)) if shares > 1 and tile.reduce == "kernel" else None
        # the host side is made here while the children compile the pieces
        return compile_nvptx_pieces(lambda: self.generate(kernel, wl, tile, llvm=False, parts=1), FUNCTION_NAME,
                                    pieces, tail, arch, link_apart=apart,
                                    max_registers=register_cap(tile) if link == "linked-capped" else None, **ptxas)


ALGORITHM = RegisterReuse()
