"""What every algorithm provides, and the pieces they share (block names, the epilogue).

An algorithm is one way to compute the sparse convolution: a TE definition plus the weight format
it reads. Its schedule rules live in `schedules/` (they name the algorithm they schedule); its
workloads carry its name (`ConvWorkload.algorithm`), so tuning records and caches never mix two.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..kernel import SparseKernel
from ..workload import ConvWorkload

CONV, EPILOGUE = "conv", "epilogue"
#: relative error against float64 a correct result stays within, by arithmetic precision: fp32
#: kernels sum in a different order than the reference; TF32 rounds both operands to 11
#: significant bits (unit roundoff 2^-11 = 4.9e-4 per product; observed ~3e-4, cuDNN TF32 alike)
TOLERANCES = {"fp32": 1e-5, "tf32": 2e-3}


class Algorithm:
    """One algorithm: `te(wl)` (arguments, then output), `pack(wl, kernel)` (its weight arrays)."""

    #: the name in workloads, tuning records and reports
    name: str = "base"
    #: name of the block that stages the input (schedule rules look for it)
    stage: str = ""
    #: arithmetic: "fp32" (the default mode's) or "tf32" (tensor cores; chosen only on request)
    precision: str = "fp32"
    #: code generated per kernel (its values in the code): no TE definition, no MetaSchedule
    #: records but tile records (`tile_records.py`); built by `build.build_generated`
    generated: bool = False

    @property
    def tolerance(self) -> float:
        """Relative error against float64 that a correct result of this algorithm stays within."""
        return TOLERANCES[self.precision]

    def applies(self, wl: ConvWorkload, target_kind: str) -> bool:
        """Whether this algorithm can compute `wl` (any algorithm's workload of the problem)."""
        raise NotImplementedError

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        """The static format sizes (`ell_width`, `chunk`) of `kernel` for this algorithm."""
        raise NotImplementedError

    def te(self, wl: ConvWorkload) -> list[te.Tensor]:
        """The TE graph: x, the weight arrays of `pack`, [bias], then the output."""
        raise NotImplementedError

    def func_attrs(self, wl: ConvWorkload) -> dict:
        """Attributes of the PrimFunc that its schedule rules read (sizes the blocks do not show)."""
        return {}

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        """The weight arrays the compiled function takes after x (bias excluded)."""
        raise NotImplementedError


def kernel_digest(kernel: SparseKernel) -> str:
    """Digest of the kernel's shape and values: what a generated algorithm's code depends on."""
    import hashlib

    dense = np.ascontiguousarray(kernel.to_dense(), np.float32)
    return hashlib.sha256(np.asarray(dense.shape, np.int64).tobytes() + dense.tobytes()).hexdigest()[:16]


class GeneratedAlgorithm(Algorithm):
    """An algorithm whose code is generated per kernel (its values in the code): no TE definition
    and no MetaSchedule design space; what a record keeps is the tile (a point of its emitter's
    design space) for a layer shape (`tile_records.py`). The compiled function's arguments are
    x, the `pack` arrays (none where the weights are in the code), [bias], out. (csr-split-k is
    built the same way from a tile, with its weights as data.)"""

    generated = True
    #: its emitter: the module of `schedules/` that defines TILES (name -> tile) and EMITTER_VERSION
    emitter: str = ""
    #: whether its code grows with the kernel's nonzeros (values compiled in: up to ~35 s per layer on
    #: 2 cores), so that `compile()` prefers a record of short code that ties with it
    #: (`build.TIE_MARGIN`)
    code_per_nonzero: bool = True

    def _emitter(self):
        import importlib

        return importlib.import_module(f"tvm_sparseconv.schedules.{self.emitter}")

    @property
    def emitter_version(self) -> int:
        """Part of the compiled module's cache key: bumped when the emitted code changes."""
        return self._emitter().EMITTER_VERSION

    def tiles(self) -> dict:
        """The emitter's named tiles (what records name)."""
        return self._emitter().TILES

    def format_of(self, kernel: SparseKernel, wl: ConvWorkload) -> dict:
        return {"ell_width": kernel.ell_width, "chunk": 0}

    def te(self, wl: ConvWorkload):
        raise TypeError(f"{self.name} has no TE definition: its code is generated from the kernel (build())")

    def pack(self, wl: ConvWorkload, kernel: SparseKernel) -> list[np.ndarray]:
        return []  # the weights are in the code

    def default_tile(self, wl: ConvWorkload) -> str:
        """The tile for a layer without a record."""
        raise NotImplementedError

    def code_key(self, kernel: SparseKernel) -> str:
        """What of the kernel its code depends on besides the workload (part of the compiled
        module's disk-cache key): the values, where they are compiled in."""
        return kernel_digest(kernel)

    def fits(self, wl: ConvWorkload, tile) -> bool:
        """Whether `tile` keeps `wl`'s code within the compile-time budget (records of tiles that
        do not are not used)."""
        return True

    def build(self, kernel: SparseKernel, wl: ConvWorkload, tile, target):
        """The compiled module (a `tvm.runtime.Executable`) of `kernel` in `wl` with `tile` for `target`."""
        raise NotImplementedError


def epilogue(wl: ConvWorkload, args: list[te.Tensor], conv: te.Tensor) -> list[te.Tensor]:
    """`args + [out]`, with `act(conv + bias)` as a separate stage when the workload has one."""
    if not wl.has_bias and wl.activation is None:
        return args + [conv]

    bias = te.placeholder((wl.out_channels,), "float32", name="bias") if wl.has_bias else None
    if bias is not None:
        args.append(bias)

    out = te.compute(conv.shape, lambda b, oh, ow, co: finish(wl, conv[b, oh, ow, co], bias, co), name=EPILOGUE)
    return args + [out]


def finish(wl: ConvWorkload, y: tirx.PrimExpr, bias: te.Tensor | None, co) -> tirx.PrimExpr:
    """`act(y + bias[co])`: the workload's bias (if `bias` is given) and activation applied to `y`."""
    if bias is not None:
        y = y + bias[co]
    return activate(y, wl.activation)


def activate(y: tirx.PrimExpr, activation: str | None, lanes: int = 1) -> tirx.PrimExpr:
    """`activation` ("relu", "relu6" or None) applied to `y` (a vector of `lanes` floats if > 1)."""
    bound = (lambda v: tirx.const(v, "float32")) if lanes == 1 else (lambda v: tirx.Broadcast(tirx.const(v, "float32"), lanes))  # noqa: E731
    if activation == "relu":
        y = tirx.max(y, bound(0.0))
    elif activation == "relu6":
        y = tirx.min(tirx.max(y, bound(0.0)), bound(6.0))
    return y
