"""Zero-copy exchange with array frameworks through DLPack.

In: any object with `__dlpack__` (tf.Tensor, numpy, PyTorch, JAX, CuPy) becomes a TVM tensor on
the same memory. TVM's kernels assume 64-byte aligned, contiguous data; an input that is not is
copied ONCE into an aligned buffer, with an `InputCopyWarning` (a strided GPU tensor is refused).
Out: the TVM output tensor is handed back to the caller's framework, again without a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
import tvm_ffi

from ._warnings import warn_user

ALIGNMENT = 64
_DL_CPU, _DL_CUDA = 1, 2


class InputCopyWarning(UserWarning):
    """An input was not contiguous or not 64-byte aligned, so it was copied once before the call."""


def framework_of(x: Any) -> str:
    """'tensorflow', 'torch', 'numpy', 'jax', 'cupy' or 'tvm' (from the object's type)."""
    root = type(x).__module__.split(".")[0]
    return {"jaxlib": "jax", "tvm_ffi": "tvm"}.get(root, root)


def _is_contiguous(t: tvm_ffi.Tensor) -> bool:
    expected, step = [], 1
    for dim in reversed(t.shape):
        expected.append(step)
        step *= dim
    return all(s == e or d == 1 for s, e, d in zip(t.strides, reversed(expected), t.shape))


def describe_device(dev: tvm.runtime.Device) -> str:
    return {_DL_CPU: "cpu", _DL_CUDA: f"cuda:{dev.index}"}.get(dev.dlpack_device_type(), str(dev))


LEGACY_DEFAULT_STREAM = 1  # DLPack's code for CUDA's legacy default stream, where TVM launches


def to_tvm(x: Any, name: str = "input") -> tvm.runtime.Tensor:
    """A TVM view of `x` (no copy), or an aligned contiguous copy of it with a warning.

    For a CUDA tensor the producer is told (DLPack's `stream` argument) that TVM reads it on the
    legacy default stream, so it orders its pending writes first (PyTorch records an event on its
    current stream and makes ours wait on it).
    """
    if isinstance(x, tvm.runtime.Tensor):
        view = x
    else:
        if not hasattr(x, "__dlpack__"):
            raise TypeError(
                f"{name} must be a DLPack tensor (tf.Tensor, numpy, torch, jax, cupy), "
                f"got {type(x).__name__}"
            )
        if on_cuda(x):
            x = _DLPackWithStream(x, LEGACY_DEFAULT_STREAM)
        try:
            view = tvm_ffi.from_dlpack(x, require_alignment=0, require_contiguous=False)
        except BufferError:
            if framework_of(x) != "numpy":
                raise
            # numpy refuses to export a read-only array over (unversioned) DLPack.
            return _aligned_copy(x, None, name, "read-only")
    if (view.data_ptr() % ALIGNMENT == 0 and _is_contiguous(view)) or 0 in tuple(view.shape):
        return view  # (nothing is read from an empty tensor: its pointer and strides do not matter)
    reason = "not 64-byte aligned" if view.data_ptr() % ALIGNMENT else "not contiguous"
    return _aligned_copy(x, view, name, reason)


def on_cuda(x: Any) -> bool:
    """True for a tensor whose DLPack device is a CUDA GPU."""
    try:
        return int(x.__dlpack_device__()[0]) == _DL_CUDA
    except Exception:  # noqa: BLE001 - no device query: treat as host memory
        return False


class _DLPackWithStream:
    """Passes our stream to the producer's `__dlpack__`, as the DLPack protocol intends."""

    def __init__(self, x: Any, stream: int):
        self._x, self._stream = x, stream

    def __dlpack__(self, **kwargs):
        kwargs["stream"] = self._stream
        return self._x.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._x.__dlpack_device__()


def _aligned_copy(x: Any, view: tvm_ffi.Tensor | None, name: str, reason: str) -> tvm.runtime.Tensor:
    """One copy of `x` into a fresh (aligned, contiguous) TVM tensor on the same device."""
    if view is None or view.device.dlpack_device_type() == _DL_CPU:
        host = np.ascontiguousarray(x if view is None else np.from_dlpack(x))
        out = tvm.runtime.empty(host.shape, str(host.dtype), tvm.cpu(0))
        out.copyfrom(host)
    elif _is_contiguous(view):
        out = tvm.runtime.empty(tuple(view.shape), str(view.dtype), view.device)
        view.copyto(out)
    else:
        raise ValueError(
            f"{name} on {describe_device(view.device)} is not contiguous (strides "
            f"{tuple(view.strides)}, shape {tuple(view.shape)}): expected a contiguous tensor "
            "(e.g. call .contiguous())"
        )
    warn_user(
        f"{name} is {reason}: copied once into an aligned buffer "
        "(pass contiguous, 64-byte aligned, writable tensors to stay zero-copy)",
        InputCopyWarning,
    )
    return out


def from_tvm(t: tvm.runtime.Tensor, like: str) -> Any:
    """Hand `t` to framework `like` without copying (TVM's buffer stays alive through DLPack)."""
    if like == "tensorflow":
        import tensorflow as tf

        return tf.experimental.dlpack.from_dlpack(t.__dlpack__())
    if like == "torch":
        import torch

        return torch.from_dlpack(t)
    if like == "numpy":
        return np.from_dlpack(t)
    if like == "jax":
        import jax.numpy as jnp

        return jnp.from_dlpack(t)
    if like == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t
