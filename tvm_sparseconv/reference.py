"""A float64 reference of `tf.nn.conv2d` (plus bias and activation) for checking any result.

Uses PyTorch in float64 where it is installed (on its GPU when the input lives there: the GPU
machine has no TensorFlow), else numpy: one float64 matrix product per kernel position.
"""

from __future__ import annotations

import numpy as np

from .workload import ConvWorkload


def conv2d_f64(x: np.ndarray, w: np.ndarray, wl: ConvWorkload, bias: np.ndarray | None = None,
               rows: np.ndarray | None = None) -> np.ndarray:
    """float64 NHWC output of `wl` for input `x` (NHWC) and dense kernel `w` (HWIO); with `rows`,
    only those output rows (axis 1), each computed in full."""
    try:
        import torch
    except ImportError:
        y = _numpy_conv(np.asarray(x, np.float64), np.asarray(w, np.float64), wl, rows)
    else:
        y = _torch_conv(torch, x, w, wl)
        y = y if rows is None else y[:, rows]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    if wl.activation == "relu":
        y = np.maximum(y, 0.0)
    elif wl.activation == "relu6":
        y = np.clip(y, 0.0, 6.0)
    return y


def _numpy_conv(x: np.ndarray, w: np.ndarray, wl: ConvWorkload, rows: np.ndarray | None = None) -> np.ndarray:
    (pt, pb), (pl, pr) = wl.pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, oh, ow, co = wl.output_shape
    sh, sw = wl.strides
    dh, dw = wl.dilations
    rows = np.arange(oh) if rows is None else np.asarray(rows)
    out = np.zeros((n, len(rows), ow, co))
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            if not w[i, j].any():
                continue
            win = xp[:, i * dh + rows * sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw, :]
            out += win @ w[i, j]
    return out


def _torch_conv(torch, x, w, wl: ConvWorkload) -> np.ndarray:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=dev).permute(0, 3, 1, 2)
    wt = torch.as_tensor(np.asarray(w), dtype=torch.float64, device=dev).permute(3, 2, 0, 1)
    (pt, pb), (pl, pr) = wl.pads
    xt = torch.nn.functional.pad(xt, (pl, pr, pt, pb))
    y = torch.nn.functional.conv2d(xt, wt, stride=wl.strides, dilation=wl.dilations)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """||y - ref|| / ||ref|| (absolute when ref is all zero); NaN anywhere gives inf."""
    y = np.asarray(y, np.float64)
    if not np.isfinite(y).all():
        return float("inf")
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(y - ref))
    return num / den if den > 0 else num
