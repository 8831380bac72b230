"""Algorithm "cpu-csr" (LLVM CPUs, stride-1 layers): compressed sparse rows, vectors along pixels.

ell-gather pads every output channel to the longest one (1.15-1.90x the useful multiply-adds on
the benchmark's 90%-pruned ResNet-50, `benchmarks/experiments/ell_padding.py`); here each channel
walks only its own nonzeros, one broadcast weight and one contiguous vector of flattened output
positions each (`schedules/cpu_csr.py`): in a zero-bordered channel-major copy of the input a tap
(ci, kh, kw) is one constant offset, so any kernel size, padding and dilation is the same loop.
Strided layers reach it as stride-1 layers on their input's stride phases (the op copies them
first, `stride_phases`). Built per layer from a tile; tile records
(`tuning_logs/<cpu>/cpu_csr.json`, `scripts/tune.py --algorithm cpu-csr`); `compile()` takes it
where its record is the layer's fastest on this CPU.

The compiled function's arguments: x, ptr, offsets, vals (`pack`), [bias], out.
"""

from __future__ import annotations

import numpy as np

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from .base import GeneratedAlgorithm


class CPUCsr(GeneratedAlgorithm):
    """Per channel its own nonzeros; vectors of flattened output positions; weights as data."""

    name = "cpu-csr"
    emitter = "cpu_csr"
    code_per_nonzero = False  # its weights are data

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        if target_kind != "llvm" or tuple(wl.strides) != (1, 1) or wl.is_empty:
            return False
        from ..schedules.cpu_csr import Plane

        return wl.input_shape[0] * wl.input_shape[3] * Plane.of(wl).pitch < 2**31  # int32 offsets into the copy

    def default_tile(self, wl: ConvWorkload) -> str:
        from ..schedules.cpu_csr import default_tile

        return default_tile(wl)

    def code_key(self, kernel: SparseKernel) -> str:
        return f"nonzeros={max(int(kernel.nnz), 1)}"  # the weights are data: only their count is in the code

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        from ..schedules.cpu_csr import pack

        return pack(wl, kernel)

    def generate(self, kernel: SparseKernel, wl: ConvWorkload, tile):
        from ..schedules.cpu_csr import emit

        if not self.applies(wl, "llvm"):
            raise ValueError(f"cpu-csr computes stride-1 layers whose input copy int32 offsets reach, "
                             f"not {wl.describe()}")
        return emit(wl, int(kernel.nnz), tile)

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target):
        import tvm

        return tvm.compile(tvm.IRModule({"sparse_conv2d": self.generate(kernel, wl, tile)}), target=target)


ALGORITHM = CPUCsr()
