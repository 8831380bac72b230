"""Dense baselines, timed the same way everywhere (median of device-event or wall timings).

- `tf.nn.conv2d`, wherever TensorFlow runs (the CPU here; a GPU where TensorFlow sees one);
- cuDNN through PyTorch on channels-last tensors with `cudnn.benchmark` on, strict fp32 and TF32:
  the library `tf.nn.conv2d` calls on a GPU, for GPU machines without TensorFlow.
Each function returns the median in seconds, or raises `BaselineUnavailable` saying why not.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .workload import ConvWorkload


class BaselineUnavailable(RuntimeError):
    """The baseline cannot run here (library missing, no device); the message says why."""


def median_wall(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def tf_conv2d_seconds(x: np.ndarray, w: np.ndarray, wl: ConvWorkload, repeats: int = 10, gpu: bool = False) -> float:
    """`tf.nn.conv2d` on the CPU (or TensorFlow's GPU), explicit padding as `wl` resolved it."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise BaselineUnavailable(f"TensorFlow is not installed ({e})") from None
    if gpu and not tf.config.list_physical_devices("GPU"):
        raise BaselineUnavailable("TensorFlow sees no GPU")
    (pt, pb), (pl, pr) = wl.pads
    pads = [[0, 0], [pt, pb], [pl, pr], [0, 0]]
    with tf.device("/GPU:0" if gpu else "/CPU:0"):
        xt, wt = tf.constant(x), tf.constant(w)
        run = lambda: tf.nn.conv2d(xt, wt, wl.strides, pads, dilations=wl.dilations).numpy()  # noqa: E731
        return median_wall(run, repeats)


def cudnn_seconds(x: np.ndarray, w: np.ndarray, wl: ConvWorkload, tf32: bool, repeats: int = 50) -> float:
    """cuDNN via PyTorch (channels-last, benchmark mode), timed with CUDA events."""
    try:
        import torch
    except ImportError as e:
        raise BaselineUnavailable(f"PyTorch is not installed ({e})") from None
    if not torch.cuda.is_available():
        raise BaselineUnavailable("PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    (pt, pb), (pl, pr) = wl.pads
    xt = torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2)
    xt = torch.nn.functional.pad(xt, (pl, pr, pt, pb)).contiguous(memory_format=torch.channels_last)
    wt = torch.as_tensor(w, device="cuda").permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    run = lambda: torch.nn.functional.conv2d(xt, wt, stride=wl.strides, dilation=wl.dilations)  # noqa: E731
    return cuda_event_median(torch, run, repeats)


def cuda_event_median(torch, fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def tvm_seconds(module, func_name: str, device, args: list, repeats: int = 50) -> float:
    """TVM's own `time_evaluator` (device timers on the GPU): median of `repeats` runs."""
    ev = module.time_evaluator(func_name, device, number=1, repeat=repeats, min_repeat_ms=0)
    return float(np.median(ev(*args).results))


def dense_baselines(x: np.ndarray, w: np.ndarray, wl: ConvWorkload, on_gpu: bool, repeats: int) -> dict:
    """{name: seconds or "unavailable: why"} for the dense baselines that fit this device."""
    out: dict[str, float | str] = {}
    if on_gpu:
        candidates = {
            "cudnn_fp32": lambda: cudnn_seconds(x, w, wl, tf32=False, repeats=repeats),
            "cudnn_tf32": lambda: cudnn_seconds(x, w, wl, tf32=True, repeats=repeats),
            "tf_conv2d_gpu": lambda: tf_conv2d_seconds(x, w, wl, repeats, gpu=True),
        }
    else:
        candidates = {"tf_conv2d": lambda: tf_conv2d_seconds(x, w, wl, repeats)}
    for name, fn in candidates.items():
        try:
            out[name] = fn()
        except BaselineUnavailable as e:
            out[name] = f"unavailable: {e}"
    return out
