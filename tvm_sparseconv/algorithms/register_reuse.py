"""Algorithm "register-reuse" (CUDA, any kernel size): the kernel's pattern and values compiled into the code.

The other algorithms read the kernel as data (an index and a load per multiply-add: at most 25% of
the fp32 peak). Here every nonzero is one FMA with its input in a register, its weight an
immediate and its sum in a register (`schedules/cuda_register_reuse.py` emits the kernel for a
`Tile`; `tvm_sparseconv/nvptx_build.py` builds it through LLVM's NVPTX backend, since nvcc cannot
compile straight-line code of this size in reasonable time). Measured in
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

#: code size budget: layers whose kernel may hold more nonzeros (ELL width x output channels) are
#: not offered. Compile time (compile(), 2 cores, one kernel, long code in pieces): 21 s at 26,214
#: FMAs (conv4 1x1 b1), 26.5 s at 58,982 (conv4 3x3, ELL width x Cout 69,632), 26.7 s at 52,429
#: (conv5 1x1 reduce_first, 67,584); ~40 s at 52,429 for conv4 1x1 proj s2 (77,824), not offered
MAX_UNROLLED_FMAS = 72_000


class RegisterReuse(GeneratedAlgorithm):
    """One FMA per nonzero in straight-line code, per thread's pixel and group of output channels."""

    name = "register-reuse"
    emitter = "cuda_register_reuse"

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        return target_kind == "cuda" and wl.ell_width * wl.out_channels <= MAX_UNROLLED_FMAS

    def default_tile(self, wl: ConvWorkload) -> str:
        from ..schedules.cuda_register_reuse import default_tile

        return default_tile(int(np.prod(wl.output_shape[:3])))

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

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target=None):
        """The compiled module: one kernel, its code compiled in pieces in parallel where long
        (`cuda_register_reuse.pieces_for`), then (split-K tiles) the kernel adding up the shares."""
        from ..nvptx_build import compile_nvptx, compile_nvptx_pieces
        from ..schedules.cuda_register_reuse import pieces_for, split_count

        arch = str(target.attrs.get("arch", "sm_90")) if target is not None else "sm_90"
        n = pieces_for(int(kernel.nnz), wl.out_channels, tile)
        if n == 1:
            return compile_nvptx(lambda llvm: self.generate(kernel, wl, tile, llvm=llvm), arch=arch)
        pieces = [self.recipe(kernel, wl, tile, piece=("part", i, n)) for i in range(n)]
        w = np.asarray(kernel.to_dense(), np.float32)
        tail = self.recipe(kernel, wl, tile, piece=("tail",)) if split_count(w, tile) > 1 else None
        return compile_nvptx_pieces(self.generate(kernel, wl, tile, llvm=False, parts=1), pieces, tail, arch)


ALGORITHM = RegisterReuse()
