"""Dense baselines and the timing method shared by the tuner and the benchmarks.

- `tf.nn.conv2d`, wherever TensorFlow runs (the CPU here; a GPU where TensorFlow sees one);
- cuDNN through PyTorch on channels-last tensors with `cudnn.benchmark` on, strict fp32 and TF32:
  the library `tf.nn.conv2d` calls on a GPU, for GPU machines without TensorFlow.

Timing: warm-up, then the median over `repeats` samples; on a GPU each sample is a batch of calls
between two CUDA events on the legacy default stream (where TVM launches too), divided by the
batch size, with the inputs rotated over several copies so that repeated runs do not measure L2.
GPU times are device times by default: a spin kernel runs first, long enough for the host to queue
the whole batch behind it, so the kernels run back to back and a call's host cost is not counted
(PyTorch's convolution costs 15-35 us per call from Python on the H200 machine, more than cuDNN's
4-18 us kernels at batch 1: per-call times there compared hosts, not kernels). `host_ahead=False`
gives the time per call as a Python caller sees it (host and device, whichever is slower).
Each function returns (seconds per call, its NHWC output as numpy) or raises
`BaselineUnavailable` saying why not; `dense_baselines` checks every output against the reference.
"""

from __future__ import annotations

import os
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


def rotated_inputs(input_shape: Sequence[int], device, seed: int = 1) -> list:
    """Random inputs of `input_shape` on `device` (TVM tensors), together larger than the L2 cache
    (`rotation_count`): the benchmarks call a kernel on each in turn, so that one that waits on
    its input's DRAM reads is timed waiting."""
    import tvm

    rng = np.random.default_rng(seed)
    n_rot = rotation_count(int(np.prod(input_shape)) * 4)
    return [tvm.runtime.tensor(rng.standard_normal(tuple(input_shape)).astype(np.float32), device) for _ in range(n_rot)]


def rotated_calls(function: Callable, xs: Sequence, rest: Sequence, out) -> Callable[[int], object]:
    """fn(i): `function(x, *rest, out)` on the i-th of `xs` in rotation (`rotated_inputs`)."""
    return lambda i: function(xs[i % len(xs)], *rest, out)


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


def interleaved_median_wall(fns: Sequence[Callable[[int], object]], repeats: int, warmup: int = 3) -> list[float]:
    """Median wall time of each of `fns` (synchronous), timed in turns, one call of each per round:
    whatever else the machine does meanwhile falls on all of them alike."""
    for i in range(warmup):
        for fn in fns:
            fn(i)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn(i)
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def cuda_event_median(fn: Callable[[int], object], repeats: int, batch: int = 10, warmup: int = 5,
                      host_ahead: bool = True) -> float:
    """Median seconds per call of `fn(i)`, timed with CUDA events around batches of calls.

    `host_ahead`: device time; each batch is queued behind a spin kernel (`torch.cuda._sleep`) that
    outlasts the host's queueing, checked on every sample (the spin doubles when the host caught up).
    Otherwise the time per call as the caller sees it, host overhead included."""
    import torch

    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    spin = 0
    if host_ahead:
        t0 = time.perf_counter()
        for i in range(batch):
            fn(i)
        spin = int(3 * (time.perf_counter() - t0) * SPIN_CYCLES_PER_S) + 200_000
        torch.cuda.synchronize()
    times, calls, attempts = [], 0, 0
    while len(times) < repeats:
        attempts += 1
        if attempts > 2 * repeats + 20:
            raise RuntimeError(f"the host could not queue {batch} calls ahead of the device (spin {spin} cycles)")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        if spin:
            torch.cuda._sleep(spin)
        start.record()
        for _ in range(batch):
            fn(calls)
            calls += 1
        end.record()
        host_ms = (time.perf_counter() - t0) * 1e3
        end.synchronize()
        if spin and host_ms >= _spin_ms(torch, spin):
            spin *= 2  # the device may have waited for the host: not a device time; take it again
            continue
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return float(np.median(times))


#: clock cycles per second that sizes the spin; too high only spins longer (H100/H200 boost ~1.98 GHz)
SPIN_CYCLES_PER_S = 2.0e9
_SPIN_MS: dict[int, float] = {}


def _spin_ms(torch, spin: int) -> float:
    """Milliseconds that a spin of `spin` cycles lasts on this device (measured once per length)."""
    if spin not in _SPIN_MS:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.cuda._sleep(spin)
        b.record()
        b.synchronize()
        _SPIN_MS[spin] = a.elapsed_time(b)
    return _SPIN_MS[spin]


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
        return median_wall(run, repeats), run(0)


def cudnn_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, tf32: bool, repeats: int,
                  host_ahead: bool = True) -> float:
    """cuDNN via PyTorch (channels-last, benchmark mode), strict fp32 or TF32 (`host_ahead`: as
    `cuda_event_median`)."""
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
    return cuda_event_median(run, repeats, host_ahead=host_ahead), run(0).permute(0, 2, 3, 1).cpu().numpy()


def xla_conv_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, highest: bool, repeats: int) -> float:
    """JAX/XLA's convolution on the GPU; `highest`: strict fp32, else XLA's default (TF32)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with the others
    try:
        import jax
    except ImportError as e:
        raise BaselineUnavailable(f"JAX is not installed ({e})") from None
    try:
        dev = jax.devices("gpu")[0]
    except RuntimeError as e:
        raise BaselineUnavailable(f"JAX sees no GPU ({e})") from None
    precision = jax.lax.Precision.HIGHEST if highest else jax.lax.Precision.DEFAULT
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
        x, k, window_strides=wl.strides, padding=list(wl.pads), rhs_dilation=wl.dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision))
    xjs, wj = [jax.device_put(x, dev) for x in xs], jax.device_put(w, dev)
    batch = 10  # XLA dispatches asynchronously: time batches, wait on the last result

    def run(i):
        for j in range(batch):
            y = conv(xjs[(i * batch + j) % len(xjs)], wj)
        y.block_until_ready()

    return median_wall(run, repeats) / batch, np.asarray(conv(xjs[0], wj))


def cusparse_im2col_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, repeats: int) -> float:
    """The sparse peer on the GPU: im2col (CuPy) then cuSPARSE CSR x dense (SpMM), both timed."""
    try:
        import cupy as cp
        import cupyx.scipy.sparse as csp
    except ImportError as e:
        raise BaselineUnavailable(f"CuPy is not installed ({e})") from None
    kh, kw, cin, cout = wl.kernel_shape
    w_csr = csp.csr_matrix(cp.asarray(w.transpose(3, 0, 1, 2).reshape(cout, -1)))
    xps = [cp.asarray(np.pad(x, ((0, 0), *wl.pads, (0, 0)))) for x in xs]
    if kh * kw * cin * int(np.prod(wl.output_shape[:3])) * 4 > 8 * 2**30:
        raise BaselineUnavailable("im2col matrix over 8 GiB")
    run = lambda i: w_csr @ _im2col(cp, xps[i % len(xps)], wl)  # noqa: E731
    return cuda_event_median(run, repeats, batch=2), _cols_to_nhwc(cp.asnumpy(run(0)), wl)


def scipy_im2col_seconds(xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, repeats: int) -> float:
    """The sparse peer on the CPU: im2col (numpy) then scipy.sparse CSR x dense."""
    try:
        import scipy.sparse as sp
    except ImportError as e:
        raise BaselineUnavailable(f"SciPy is not installed ({e})") from None
    kh, kw, cin, cout = wl.kernel_shape
    w_csr = sp.csr_matrix(w.transpose(3, 0, 1, 2).reshape(cout, -1))
    xps = [np.pad(x, ((0, 0), *wl.pads, (0, 0))) for x in xs]
    run = lambda i: w_csr @ _im2col(np, xps[i % len(xps)], wl)  # noqa: E731
    return median_wall(run, repeats, warmup=1), _cols_to_nhwc(run(0), wl)


def _cols_to_nhwc(y, wl: ConvWorkload) -> np.ndarray:
    n, oh, ow, cout = wl.output_shape
    return np.asarray(y).reshape(cout, n, oh, ow).transpose(1, 2, 3, 0)


def _im2col(xp, x_padded, wl: ConvWorkload):
    """(KH*KW*Cin, N*OH*OW) matrix of input windows, rows ordered like the HWIO kernel."""
    n, oh, ow, _ = wl.output_shape
    kh, kw, cin, _ = wl.kernel_shape
    (sh, sw), (dh, dw) = wl.strides, wl.dilations
    s = x_padded.strides
    win = xp.lib.stride_tricks.as_strided(
        x_padded, (kh, kw, cin, n, oh, ow), (s[1] * dh, s[2] * dw, s[3], s[0], s[1] * sh, s[2] * sw))
    return xp.ascontiguousarray(win).reshape(kh * kw * cin, n * oh * ow)


#: the dense baselines timed on each kind of device, in the order `dense_baselines` runs them
BASELINE_NAMES = {
    True: ("cudnn_fp32", "cudnn_tf32", "tf_conv2d_gpu", "xla_fp32", "xla_default", "cusparse_im2col"),
    False: ("tf_conv2d", "scipy_im2col"),
}


def check_names(names: Sequence[str], on_gpu: bool) -> None:
    """Raise ValueError naming the known baselines if any of `names` is not one of them."""
    unknown = sorted(set(names) - set(BASELINE_NAMES[on_gpu]))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; on this device: {', '.join(BASELINE_NAMES[on_gpu])}")


def dense_baselines(
    xs: Sequence[np.ndarray], w: np.ndarray, wl: ConvWorkload, on_gpu: bool, repeats: int,
    ref: np.ndarray | None = None, only: Sequence[str] = (),
) -> tuple[dict, dict]:
    """({name: seconds, or "unavailable: why"}, {name: relative error vs `ref`}) for this device;
    `only` names a subset of the baselines (default: all)."""
    if on_gpu:
        candidates = {
            "cudnn_fp32": lambda: cudnn_seconds(xs, w, wl, tf32=False, repeats=repeats),
            "cudnn_tf32": lambda: cudnn_seconds(xs, w, wl, tf32=True, repeats=repeats),
            "tf_conv2d_gpu": lambda: tf_conv2d_seconds(xs, w, wl, repeats, gpu=True),
            "xla_fp32": lambda: xla_conv_seconds(xs, w, wl, True, repeats),
            "xla_default": lambda: xla_conv_seconds(xs, w, wl, False, repeats),
            "cusparse_im2col": lambda: cusparse_im2col_seconds(xs, w, wl, max(5, repeats // 5)),
        }
    else:
        candidates = {
            "tf_conv2d": lambda: tf_conv2d_seconds(xs, w, wl, repeats),
            "scipy_im2col": lambda: scipy_im2col_seconds(xs, w, wl, max(2, repeats // 2)),
        }
    from .reference import relative_error

    assert tuple(candidates) == BASELINE_NAMES[on_gpu], "BASELINE_NAMES out of step with dense_baselines"
    check_names(only, on_gpu)
    if only:
        candidates = {k: v for k, v in candidates.items() if k in only}
    times: dict[str, float | str] = {}
    errors: dict[str, float] = {}
    for name, fn in candidates.items():
        try:
            times[name], y = fn()
            if ref is not None:
                errors[name] = relative_error(y, ref)
        except BaselineUnavailable as e:
            times[name] = f"unavailable: {e}"
        except Exception as e:  # noqa: BLE001 - a baseline's own failure is reported, not fatal
            times[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
    return times, errors


def measure_ceilings(on_gpu: bool) -> dict:
    """The device's measured ceilings: strict-fp32 GEMM TFLOP/s and copy TB/s (read + write)."""
    n = 8192 if on_gpu else 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    if on_gpu:
        torch = _torch_cuda()
        torch.backends.cuda.matmul.allow_tf32 = False
        ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(a.T.copy(), device="cuda")
        t_mm = cuda_event_median(lambda i: ta @ tb, 10, batch=3)
        big = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
        dst = torch.empty_like(big)
        t_cp = cuda_event_median(lambda i: dst.copy_(big), 10, batch=3)
        nbytes = 2 * big.numel() * 4
    else:
        t_mm = median_wall(lambda i: a @ a, 5)
        big = np.ones(2**26, np.float32)
        dst = np.empty_like(big)
        t_cp = median_wall(lambda i: np.copyto(dst, big), 5)
        nbytes = 2 * big.size * 4
    return {"fp32_gemm_tflops": 2 * n**3 / t_mm / 1e12, "copy_tbps": nbytes / t_cp / 1e12,
            "method": f"{n}^3 fp32 matmul (no TF32); {nbytes // 2**20} MiB copy, read+write counted"}
