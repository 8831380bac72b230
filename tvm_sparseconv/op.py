"""The user-facing op: `compile(kernel, input_shape, ...)` -> a callable on framework tensors.

Compiled ops are cached in memory (per kernel object and arguments) and their machine code on disk
(see `build.py`). A compiled op holds its weights on the device and only allocates its output per
call (on a CPU from a small pool of buffers whose earlier results nobody holds any more:
`output_pool.py`), so it may be called from several threads at once.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import tvm

from . import interop
from .build import BuildResult, build, build_generated, build_layer, building_layer
from . import algorithms
from .kernel import SparseKernel
from .output_pool import OutputPool
from .stride_phases import StridePhases, phase_function
from .targets import TargetLike, device_for, resolve_target
from .workload import ConvWorkload, Padding


class SparseConv2D:
    """A sparse conv2d compiled for one input shape and one device. Call it on a tensor."""

    #: CPUs: run a strided layer as the stride-1 layer on a copy of its input's stride phases
    #: (`stride_phases`); False computes it with strided reads (`benchmarks/experiments/stride_phases.py`
    #: and `subsampled_1x1.py` compare)
    phase_strided: bool = True
    #: CPUs: outputs come from a pool (`output_pool`) instead of a fresh allocation per call
    _outputs: OutputPool | None = None

    def __init__(self, kernel: SparseKernel, workload: ConvWorkload, target, bias: np.ndarray | None,
                 algorithm: str | None = None, precision: str = "fp32"):
        # No reference to `kernel` itself: the in-memory cache is keyed weakly on it.
        self.nnz = kernel.nnz
        self.target = target
        self.device = device_for(target)
        self._input_shape = workload.input_shape
        #: the layer as given (`workload` is what runs: on CPUs a strided layer's stride phases)
        self.layer_workload = workload
        #: on CPUs a strided layer runs as a copy of its input's stride phases and the stride-1 layer
        #: on them (`stride_phases`); GPU kernels read strided input in their staging
        self.phases = self.stride_phases(workload, target)
        if self.phases is not None:
            self._phase_copy = phase_function(self.phases, str(target))
            workload, kernel = self.phases.workload(workload), self.phases.kernel(kernel)
        with building_layer(self.layer_workload if self.phases is not None else None):
            self._build = self._build_for(kernel, workload, target, algorithm, precision)
        self.workload = self._build.workload
        self._weights = [tvm.runtime.tensor(a, self.device) for a in algorithms.pack_weights(self.workload, kernel)]
        if bias is not None:
            self._weights.append(tvm.runtime.tensor(bias, self.device))
        if target.kind.name == "llvm":
            self._outputs = OutputPool(self.output_shape)

    @classmethod
    def stride_phases(cls, workload: ConvWorkload, target) -> StridePhases | None:
        """The stride phases `workload` runs on for `target` (CPUs, strided layers), else None."""
        return StridePhases.of(workload) if target.kind.name == "llvm" and cls.phase_strided else None

    @staticmethod
    def _build_for(kernel: SparseKernel, workload: ConvWorkload, target, algorithm: str | None,
                   precision: str) -> BuildResult:
        """The build of `workload`: compile()'s choice of algorithm and schedule, or `algorithm`'s."""
        if algorithm is None:
            return build_layer(
                kernel, algorithms.workloads_for(kernel, workload, target.kind.name, precision),
                algorithms.generated_workloads_for(kernel, workload, target.kind.name, precision), target)
        if algorithms.by_name(algorithm).generated:
            return build_generated(kernel, algorithms.workload_for(kernel, workload, algorithm), target)
        return build([algorithms.workload_for(kernel, workload, algorithm)], target)

    # --- information ---------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self._input_shape

    @property
    def conv_input_shape(self) -> tuple[int, int, int, int]:
        """The input shape of the compiled function: `input_shape`, or where the op copies its
        input's stride phases first (`phases`), that of the copy."""
        return self.workload.input_shape

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.workload.output_shape

    @property
    def tuned(self) -> bool:
        """True when a tuning record (not the untuned template) scheduled this op."""
        return self._build.tuned

    @property
    def algorithm(self) -> str:
        """The algorithm computing this op (`tvm_sparseconv.algorithms`)."""
        return self.workload.algorithm

    @property
    def schedule_source(self) -> str:
        return self._build.schedule_source

    def __repr__(self) -> str:
        return (
            f"SparseConv2D({self.workload.describe()}, target={self.target.kind.name}, "
            f"{self.schedule_source})"
        )

    # --- running -------------------------------------------------------------------------------
    def __call__(self, x: Any) -> Any:
        """Convolve `x` (NHWC float32, the compiled shape, on the compiled device)."""
        view = interop.to_tvm(x, "input")
        self._check_input(view)
        if self._outputs is not None:  # TVM's view of a pooled buffer: the result keeps the buffer referenced
            out = tvm.runtime.from_dlpack(self._outputs.take())
        else:
            out = tvm.runtime.empty(self.output_shape, "float32", self.device)
        self.run(view, out)
        return interop.from_tvm(out, interop.framework_of(x))

    def run(self, x: tvm.runtime.Tensor, out: tvm.runtime.Tensor) -> None:
        """Low-level call on TVM tensors (no checks): writes the result into `out`."""
        if self.phases is not None:
            phased = tvm.runtime.empty(self.conv_input_shape, "float32", self.device)  # per call: thread-safe
            self._phase_copy(x, phased)
            x = phased
        self._build.function(x, *self._weights, out)

    def _check_input(self, view) -> None:
        if tuple(view.shape) != self.input_shape:
            raise ValueError(
                f"input shape {tuple(view.shape)} does not match the compiled shape "
                f"{self.input_shape} (NHWC); compile again for a new shape"
            )
        if str(view.dtype) != "float32":
            raise TypeError(f"input dtype must be float32, got {view.dtype}")
        dev = view.device
        if (dev.dlpack_device_type(), dev.index) != (self.device.dlpack_device_type(), self.device.index):
            raise ValueError(
                f"input is on {interop.describe_device(dev)} but this op was compiled for "
                f"{interop.describe_device(self.device)}"
            )


class EmptySparseConv2D(SparseConv2D):
    """The op for a shape without input or output elements (`ConvWorkload.is_empty`), as
    `tf.nn.conv2d` computes it: an output of the right shape (empty, or, for an empty input with
    explicit padding, every window reading only padding: `activation(bias)`). No TVM kernel runs."""

    def __init__(self, kernel: SparseKernel, workload: ConvWorkload, target, bias: np.ndarray | None,
                 algorithm: str | None = None, precision: str = "fp32"):
        self.nnz = kernel.nnz
        self.target = target
        self.device = device_for(target)
        self._input_shape, self.phases, self.layer_workload = workload.input_shape, None, workload
        self.workload = workload if algorithm is None else replace(workload, algorithm=algorithm)
        value = np.zeros(workload.out_channels, np.float32) if bias is None else bias
        if workload.activation in ("relu", "relu6"):
            value = np.maximum(value, 0)
        if workload.activation == "relu6":
            value = np.minimum(value, 6)
        self._value = np.broadcast_to(value.astype(np.float32), workload.output_shape)

    @property
    def tuned(self) -> bool:
        return False

    @property
    def schedule_source(self) -> str:
        return "empty"

    def run(self, x: tvm.runtime.Tensor, out: tvm.runtime.Tensor) -> None:
        if self._value.size:
            out.copyfrom(np.ascontiguousarray(self._value))


# --- compile, with an in-memory cache ------------------------------------------------------------
_CACHE: "weakref.WeakKeyDictionary[SparseKernel, dict]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def _normalize_bias(bias: Any, cout: int) -> np.ndarray | None:
    if bias is None:
        return None
    arr = np.asarray(bias.numpy() if hasattr(bias, "numpy") else bias)
    if arr.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},) (one per output channel), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"bias must be float32, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("bias must be finite (found NaN or Inf)")
    return np.ascontiguousarray(arr, np.float32)


def compile(  # noqa: A001 - the natural name, as tvm.compile
    kernel: SparseKernel,
    input_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilations: int | Sequence[int] = 1,
    bias: Any = None,
    activation: str | None = None,
    target: TargetLike = None,
    algorithm: str | None = None,
    precision: str = "fp32",
) -> SparseConv2D:
    """Compile a sparse conv2d with `tf.nn.conv2d` semantics for one NHWC input shape.

    `target=None` picks CUDA when TVM sees a GPU, else this CPU. `algorithm=None` takes, of the
    algorithms that run on the target, the one with the fastest record for this layer and device
    in `tuning_logs/` (MetaSchedule records; for the generated "register-reuse", the kernel's values
    compiled into the code, its tile record's time, scaled up for a denser kernel), else the
    default algorithm's untuned template (with a warning); a name
    (`tvm_sparseconv.algorithms.ALGORITHMS`) forces that algorithm. `precision="tf32"` also
    lets TF32 tensor-core algorithms compete (TensorFlow's own default on Ampere and newer GPUs;
    relative error about 3e-4 instead of fp32's 1e-6); the default "fp32" never uses them.

    Shapes without input or output elements (batch 0, ...) follow `tf.nn.conv2d`: the op returns
    an output of the right shape (`EmptySparseConv2D`, nothing compiled).
    """
    if not isinstance(kernel, SparseKernel):
        raise TypeError(
            f"kernel must be a SparseKernel (build one with SparseKernel.from_dense(w)), "
            f"got {type(kernel).__name__}"
        )
    bias_arr = _normalize_bias(bias, kernel.shape[3])
    wl = ConvWorkload.create(
        input_shape, kernel.shape, kernel.ell_width, strides, padding, dilations,
        has_bias=bias_arr is not None, activation=activation, allow_empty=True,
    )
    tgt = resolve_target(target)
    algorithms.check_precision(precision)
    if algorithm is not None:
        chosen = algorithms.by_name(algorithm)
        phases = SparseConv2D.stride_phases(wl, tgt)  # on CPUs a strided layer runs as a stride-1 one
        if not chosen.applies(wl if phases is None else phases.workload(wl), tgt.kind.name):
            raise ValueError(f"algorithm {algorithm!r} does not run this layer on target kind {tgt.kind.name!r}")
        if not algorithms.allowed(chosen, precision):
            raise ValueError(f"algorithm {algorithm!r} computes in {chosen.precision}; pass precision={chosen.precision!r}")
    key = (wl, str(tgt), None if bias_arr is None else bias_arr.tobytes(), algorithm, precision)
    with _CACHE_LOCK:
        per_kernel = _CACHE.setdefault(kernel, {})
        if key in per_kernel:
            return per_kernel[key]
        key_lock = _KEY_LOCKS.setdefault((id(kernel), key), threading.Lock())
    with key_lock:  # one compile per key, even when several threads ask at once
        with _CACHE_LOCK:
            if key in per_kernel:
                return per_kernel[key]
        op = (EmptySparseConv2D if wl.is_empty else SparseConv2D)(kernel, wl, tgt, bias_arr, algorithm, precision)
        with _CACHE_LOCK:
            per_kernel[key] = op
            _KEY_LOCKS.pop((id(kernel), key), None)
        return op


def conv2d(
    x: Any,
    kernel: SparseKernel,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilations: int | Sequence[int] = 1,
    bias: Any = None,
    activation: str | None = None,
    target: TargetLike = None,
) -> Any:
    """One-shot `tf.nn.conv2d` with a sparse kernel; compiles on first use (cached) and runs."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"x must be a tensor with a shape, got {type(x).__name__}")
    if target is None:
        target = "cuda" if interop.on_cuda(x) else "cpu"
    op = compile(kernel, tuple(int(d) for d in shape), strides, padding, dilations, bias, activation, target)
    return op(x)
