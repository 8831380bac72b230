"""Algorithm "csr-split-k" (CUDA, 1x1 layers): compressed sparse rows, input channels split across blocks.

For layers whose kernels wait on latency, not throughput (batch 1): each block stages ONE chunk of
input channels of its pixels from the NHWC input into shared memory and walks its output channels'
nonzeros in that chunk (no padding to the longest row); the chunks' sums meet in the output by
atomicAdd (or, with cluster tiles, the chunks of a block column form a thread-block cluster and add
up their sums in distributed shared memory, in a fixed order). The code is small and reads the weights as data (`schedules/cuda_csr_split_k.py`);
like the generated algorithms it is built per layer from a tile (a point of its emitter's grid),
its records are tile records (`tile_records.py`, `scripts/tune.py --algorithm csr-split-k`), and
`compile()` takes it where its record is the layer's fastest. With atomics its sums arrive in any
order, so results may differ in the last bits between runs (within fp32's tolerance); cluster tiles
give the same bits every run.

The compiled function's arguments: x, ptr, weights (`pack`), [bias], out.
"""

from __future__ import annotations

import numpy as np

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from .base import GeneratedAlgorithm


class CsrSplitK(GeneratedAlgorithm):
    """Per block one chunk of input channels x some output channels x some pixels; sums by atomicAdd."""

    name = "csr-split-k"
    emitter = "cuda_csr_split_k"
    code_per_nonzero = False  # its weights are data: the code is the same size for every kernel

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        return target_kind == "cuda" and tuple(wl.kernel_shape[:2]) == (1, 1)

    def default_tile(self, wl: ConvWorkload) -> str:
        from ..schedules.cuda_csr_split_k import default_tile

        return default_tile(int(np.prod(wl.output_shape[:3])))

    def fits(self, wl: ConvWorkload, tile) -> bool:
        from ..schedules.cuda_csr_split_k import MAX_SHARED_BYTES, reduces_in_cluster, shared_bytes

        pixels = int(np.prod(wl.output_shape[:3]))
        cin = wl.input_shape[3]
        # no tile wider than the layer in any dimension (its blocks would be mostly idle); a cluster
        # tile only where its chunks make a cluster (2 to 8 of them)
        return (shared_bytes(tile) <= MAX_SHARED_BYTES and tile.pixels <= max(pixels, 16)
                and tile.rows <= max(wl.out_channels, 16) and tile.chunk <= max(cin, 64)
                and (tile.reduce != "cluster" or reduces_in_cluster(cin, tile)))

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        from ..schedules.cuda_csr_split_k import pack

        return pack(kernel)

    def generate(self, kernel: SparseKernel, wl: ConvWorkload, tile):
        """The PrimFunc of `wl` with `tile` (its buffers sized for `kernel`'s nonzeros; its blocks'
        weights staged in shared memory only where `weights_segment` says so)."""
        from ..schedules.cuda_csr_split_k import emit

        return emit(wl.input_shape, wl.output_hw, wl.strides, wl.pads, wl.out_channels, int(kernel.nnz), tile,
                    bias=wl.has_bias, activation=wl.activation, segment=self.weights_segment(kernel, wl, tile))

    @staticmethod
    def weights_segment(kernel: SparseKernel, wl: ConvWorkload, tile) -> int | None:
        """The slots per channel of a block's weights in shared memory (the kernel's longest
        run of nonzeros in one chunk), or None where each thread reads its weights from global
        memory: by default (`SHARED_WEIGHTS`, measured slower), and where they do not fit beside
        the input or the unrolled loop would be too long."""
        from ..schedules import cuda_csr_split_k as emitter
        from ..schedules.cuda_csr_split_k import MAX_SHARED_BYTES, longest_segment, pack, shared_weights_bytes

        if not emitter.SHARED_WEIGHTS:
            return None
        segment = longest_segment(pack(kernel)[0], wl.input_shape[3], tile.chunk)
        fits = shared_weights_bytes(tile, segment) <= MAX_SHARED_BYTES and segment <= emitter.MAX_UNROLLED_SEGMENT
        return segment if fits else None

    def ir_module(self, kernel: SparseKernel, wl: ConvWorkload, tile):
        """What `build` compiles (the CUDA emulator runs it too)."""
        import tvm

        from ..schedules.cuda_csr_split_k import FUNCTION_NAME

        return tvm.IRModule({FUNCTION_NAME: self.generate(kernel, wl, tile)})

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target=None):
        from ..targets import cuda_target_for_arch
        from ..tir_build import compile_tir

        target = target if target is not None else cuda_target_for_arch()
        return compile_tir(self.ir_module(kernel, wl, tile), target)


ALGORITHM = CsrSplitK()
