"""Dense baselines and the timing method shared by the tuner and the benchmarks.

- `tf.nn.conv2d`, wherever TensorFlow runs (the CPU here; a GPU where TensorFlow sees one);
- cuDNN through PyTorch on channels-last tensors with `cudnn.benchmark` on, strict fp32 and TF32:
  the library `tf.nn.conv2d` calls on a GPU, for GPU machines without TensorFlow.

Timing: warm-up, then the median over `repeats` samples; on a GPU each sample is a batch of calls
between two CUDA events on the legacy default stream (where TVM launches too), divided by the
batch size, with the inputs rotated over several copies so that repeated runs do not measure L2.
Each function returns seconds per call, or raises `BaselineUnavailable` saying why not.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from .workload import ConvWorkload

L2_BYTES = 60 * 2**20  # above the H100's 50 MB and H200's 60 MB L2: rotate inputs smaller than this


class BaselineUnavailable(RuntimeError):
    """The baseline cannot run here (library missing, no device); the message says why."""


def rotation_count(input_bytes: int) -> int:
    """How many input copies make a rotation larger than the L2 cache (1 when one already is)."""
    return int(min(max(1, -(-2 * L2_BYTES // max(input_bytes, 1))), 16))


def median_wall(fn: Callable[[int], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn(i)` (i = call number, to rotate inputs); for synchronous work."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cuda_event_median(fn: Callable[[int], object], repeats: int, batch: int = 10, warmup: int = 5) -> float:
    """Median seconds per call of `fn(i)`, timed with CUDA events around batches of calls."""
    import torch

    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times, calls = [], 0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn(calls)
            calls += 1
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return float(np.median(times))


def _torch_cuda():
    try:
        import torch
    except ImportError as e:
        raise BaselineUnavailable(f"PyTorch is not installed ({e})") from None
    if not torch.cuda.is_available():
        raise BaselineUnavailable("PyTorch sees no CUDA device")
    return torch


def tf_conv2d_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, repeats: int, gpu: bool = False) -> float:
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
        xts, wt = [tf.constant(x) for x in xs], tf.constant(w)
        run = lambda i: tf.nn.conv2d(xts[i % len(xts)], wt, wl.strides, pads, dilations=wl.dilations).numpy()  # noqa: E731
        return median_wall(run, repeats)


def cudnn_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, tf32: bool, repeats: int) -> float:
    """cuDNN via PyTorch (channels-last, benchmark mode), strict fp32 or TF32."""
    torch = _torch_cuda()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    (pt, pb), (pl, pr) = wl.pads
    xts = [
        torch.nn.functional.pad(torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2), (pl, pr, pt, pb))
        .contiguous(memory_format=torch.channels_last)
        for x in xs
    ]
    wt = torch.as_tensor(w, device="cuda").permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.functional.conv2d
    run = lambda i: conv(xts[i % len(xts)], wt, stride=wl.strides, dilation=wl.dilations)  # noqa: E731
    return cuda_event_median(run, repeats)


def dense_baselines(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, on_gpu: bool, repeats: int) -> dict:
    """{name: seconds, or "unavailable: why"} for the dense baselines that fit this device."""
    if on_gpu:
        candidates = {
            "cudnn_fp32": lambda: cudnn_seconds(xs, w, wl, tf32=False, repeats=repeats),
            "cudnn_tf32": lambda: cudnn_seconds(xs, w, wl, tf32=True, repeats=repeats),
            "tf_conv2d_gpu": lambda: tf_conv2d_seconds(xs, w, wl, repeats, gpu=True),
        }
    else:
        candidates = {"tf_conv2d": lambda: tf_conv2d_seconds(xs, w, wl, repeats)}
    out: dict[str, float | str] = {}
    for name, fn in candidates.items():
        try:
            out[name] = fn()
        except BaselineUnavailable as e:
            out[name] = f"unavailable: {e}"
    return out
