"""Strided layers on CPUs as stride-1 layers on their input's stride phases (a space-to-depth copy).

A layer of stride (sh, sw) and top/left padding (pt, pl) reads input row ``sh*oh + kh - pt``.
With ``kh = sh*qh + ph`` that is row ``oh + qh`` of phase ``ph``, so with the phased input

    P[n, i, j, (ph*npw + pw)*C + ci] = x[n, sh*i + ph - pt, sw*j + pw - pl, ci]   (0 outside x)

the layer is the stride-1 VALID layer on P with the kernel

    W'[qh, qw, (ph*npw + pw)*C + ci, co] = W[sh*qh + ph, sw*qw + pw, ci, co]   (0 past the kernel):

ceil(KH/sh) x ceil(KW/sw) taps over npw*nph*C channels (nph = min(sh, KH)), the same nonzeros, the
same output. The copy is one pass over the input; the stride-1 kernels then read contiguous vectors
where the strided layer read with a stride (a gather per vector on a CPU: ResNet-50's stride-2 3x3
and 1x1 layers ran 1.4-7x slower than its stride-1 layers of as much work). A strided 1x1 layer
without padding is one phase, every stride-th pixel (``x[:, ::sh, ::sw, :]``).

`op.SparseConv2D` runs strided layers so on CPUs (`StridePhases.of`); the TensorFlow op does the
same copy itself (`tf_op`), and `workloads.Problem.for_target` tunes what runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from .kernel import SparseKernel
from .workload import ConvWorkload


@dataclass(frozen=True)
class StridePhases:
    """How a strided layer's input is copied into its stride phases (see the module docstring)."""

    input_shape: tuple[int, int, int, int]  # the layer's NHWC input
    strides: tuple[int, int]
    pads: tuple[int, int]  # the layer's top and left padding
    phases: tuple[int, int]  # phases taken along rows and columns: min(stride, kernel size)
    shape: tuple[int, int, int, int]  # the phased input: (N, OH + QH - 1, OW + QW - 1, nph*npw*C)

    @staticmethod
    def of(wl: ConvWorkload) -> "StridePhases | None":
        """The phases of a strided layer, or None where there is nothing to gain (stride 1) or the
        layer is dilated along a strided axis with more than one tap (not a phase split)."""
        if wl.strides == (1, 1) or wl.is_empty:
            return None
        if any(d > 1 and k > 1 for d, k in zip(wl.dilations, wl.kernel_shape[:2])):
            return None
        n, _, _, c = wl.input_shape
        kh, kw = wl.kernel_shape[:2]
        (sh, sw), (oh, ow) = wl.strides, wl.output_hw
        phases = (min(sh, kh), min(sw, kw))
        taps = (-(-kh // sh), -(-kw // sw))
        shape = (n, oh + taps[0] - 1, ow + taps[1] - 1, phases[0] * phases[1] * c)
        return StridePhases(wl.input_shape, (sh, sw), (wl.pads[0][0], wl.pads[1][0]), phases, shape)

    def workload(self, wl: ConvWorkload) -> ConvWorkload:
        """The stride-1 VALID layer on the phased input that computes `wl`."""
        taps = (self.shape[1] - wl.output_hw[0] + 1, self.shape[2] - wl.output_hw[1] + 1)
        return replace(wl, input_shape=self.shape, kernel_shape=(*taps, self.shape[3], wl.kernel_shape[3]),
                       strides=(1, 1), dilations=(1, 1), pads=((0, 0), (0, 0)))

    def dense_kernel(self, w: np.ndarray) -> np.ndarray:
        """W' (HWIO) from the layer's HWIO kernel `w`."""
        kh, kw, c, cout = w.shape
        (sh, sw), (nph, npw) = self.strides, self.phases
        out = np.zeros((-(-kh // sh), -(-kw // sw), nph * npw * c, cout), w.dtype)
        for ph in range(nph):
            for pw in range(npw):
                part = w[ph::sh, pw::sw]  # taps sh*qh + ph, sw*qw + pw
                first = (ph * npw + pw) * c
                out[:part.shape[0], :part.shape[1], first:first + c] = part
        return out

    def kernel(self, kernel: SparseKernel) -> SparseKernel:
        """The stride-1 layer's sparse kernel: the same nonzeros at their phased taps."""
        phased = SparseKernel.from_dense(self.dense_kernel(kernel.to_dense()))
        assert phased.nnz == kernel.nnz, "a phase split keeps every nonzero"
        return phased

    def gather(self, x: np.ndarray) -> np.ndarray:
        """The phased input of NHWC `x` in numpy (the reference the compiled copy is tested against)."""
        n, h, w, c = self.input_shape
        (sh, sw), (pt, pl), (nph, npw) = self.strides, self.pads, self.phases
        _, rows, cols, _ = self.shape
        out = np.zeros(self.shape, x.dtype)
        for ph in range(nph):
            for pw in range(npw):
                r = sh * np.arange(rows) + ph - pt
                q = sw * np.arange(cols) + pw - pl
                ri, qi = (r >= 0) & (r < h), (q >= 0) & (q < w)
                first = (ph * npw + pw) * c
                block = out[:, :, :, first:first + c]
                block[:, np.flatnonzero(ri)[:, None], np.flatnonzero(qi)[None, :]] = x[:, r[ri]][:, :, q[qi]]
        return out


@functools.lru_cache(maxsize=64)
def phase_function(phases: StridePhases, target: str):
    """fn(x, y): y = the phased input of float32 NHWC `x` (`StridePhases`), compiled for LLVM `target`."""
    _, h, w, c = phases.input_shape
    (sh, sw), (pt, pl), (nph, npw) = phases.strides, phases.pads, phases.phases
    x = te.placeholder(phases.input_shape, "float32", name="x")

    def value(b, i, j, k):
        phase, ci = k // c, k % c
        r, q = sh * i + phase // npw - pt, sw * j + phase % npw - pl
        inside = tirx.all(r >= 0, r < h, q >= 0, q < w)
        return tirx.if_then_else(inside, x[b, tirx.max(tirx.min(r, h - 1), 0), tirx.max(tirx.min(q, w - 1), 0), ci],
                                 tirx.const(0.0, "float32"))

    y = te.compute(phases.shape, value, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]).with_attr("global_symbol", "stride_phases"))
    b, i, j, k = sch.get_loops(sch.get_sblock("y"))
    sch.parallel(sch.fuse(b, i))  # rows of the phased input across the cores
    _, ci = sch.split(k, factors=[nph * npw, c])  # a phase's channels are contiguous in both
    if c % 8 == 0:
        sch.vectorize(sch.split(ci, factors=[None, 8])[1])
    return tvm.compile(sch.mod, target=tvm.target.Target(target))["stride_phases"]
