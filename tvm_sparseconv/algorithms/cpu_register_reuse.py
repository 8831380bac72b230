"""Algorithm "cpu-register-reuse" (LLVM CPU targets, any kernel size): the kernel's values compiled
into vector code, vectors along output pixels.

The CPU counterpart of "register-reuse" (`schedules/cpu_register_reuse.py` emits it): every nonzero
is one vector FMA with its weight a constant, so one loaded input vector (8 pixels of one input
channel) feeds every nonzero of that channel in a group of 8 output channels, and no weight is
read as data. Measured against tf.nn.conv2d and the library in
`benchmarks/experiments/cpu_register_reuse.md`. A record (`tuning_logs/<cpu>/cpu_register_reuse.json`,
from `benchmarks/experiments/cpu_register_reuse.py --record`) keeps the tile of a layer shape;
`compile()` takes it where that record beats the layer's MetaSchedule records on this CPU.
"""

from __future__ import annotations

import numpy as np

from ..kernel import SparseKernel
from ..workload import ConvWorkload
from .base import GeneratedAlgorithm

#: code size budget (ELL width x output channels). Since the input relayout is a loop per tap
#: (emitter version 2; it was straight-line code, LLVM's time grew with taps x Cin: conv3 3x3 took
#: 140-161 s on znver3), LLVM's x86 backend takes, on the 2-core znver5 machine for its own CPU,
#: as compile() builds (benchmarks/experiments/compile_time-cpu-znver5-2cores-cpu-register-reuse.json,
#: 2026-12-02): 22.4-23.4 s for conv3 1x1 proj s2 and conv4 1x1 reduce_first (13,107 nonzeros,
#: 18,432-20,480 possible), 37.7 s for conv3 3x3 (14,746, 19,456: over the 30 s target), 63.8 s
#: for conv4 1x1 reduce (26,214, 33,792: out; a day earlier the same machine type took 26.8 s). The
#: backend's time grows faster than the code: conv4 1x1 reduce with half its channels 16-19 s of
#: code generation, whole 56-70 s (`benchmarks/experiments/cpu_llvm_opt_level.py`)
MAX_UNROLLED_FMAS = 21_000
#: and at most this many (tap, vector of input channels) rows: the 11x11 headline (24,781
#: nonzeros, 121 taps x 4 vectors) took 55.6 s; conv1 7x7 (49 taps x 1) 2.8 s. A halo tile's rows
#: are (kernel row, vector): 11 x 4 on the headline (`schedules.cpu_register_reuse.scratch_rows`)
MAX_TAP_VECTORS = 300


class CPURegisterReuse(GeneratedAlgorithm):
    """One vector FMA per nonzero in straight-line code, per group of output channels."""

    name = "cpu-register-reuse"
    emitter = "cpu_register_reuse"

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        from ..schedules.cpu_register_reuse import Tile

        return (target_kind == "llvm" and wl.ell_width * wl.out_channels <= MAX_UNROLLED_FMAS
                and any(self.fits(wl, Tile(halo=halo)) for halo in (False, True)))

    def fits(self, wl: ConvWorkload, tile) -> bool:
        """Within the relayout's row budget; halo tiles only at stride 1 along the width."""
        from ..schedules.cpu_register_reuse import scratch_rows

        return scratch_rows(wl.kernel_shape, tile) <= MAX_TAP_VECTORS and (not tile.halo or wl.strides[1] == 1)

    def default_tile(self, wl: ConvWorkload) -> str:
        from ..schedules.cpu_register_reuse import DEFAULT_TILE

        return DEFAULT_TILE

    def generate(self, kernel: SparseKernel, wl: ConvWorkload, tile):
        """The PrimFunc for `kernel` in layer `wl` with `tile`."""
        from ..schedules.cpu_register_reuse import emit

        return emit(np.asarray(kernel.to_dense(), np.float32), wl.input_shape, wl.output_hw, wl.strides, wl.pads,
                    bias=wl.has_bias, activation=wl.activation, dilations=wl.dilations, lanes=tile.lanes,
                    blocks=tile.blocks, halo=tile.halo)

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target):
        import tvm

        return tvm.compile(tvm.IRModule({"sparse_conv2d": self.generate(kernel, wl, tile)}), target=target)


ALGORITHM = CPURegisterReuse()
