"""The CPU register-reuse kernel (pattern in the code, vectors along pixels) against float64."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparseconv import reference, targets
from tvm_sparseconv.schedules.cpu_register_reuse import emit
from tvm_sparseconv.workload import ConvWorkload

CASES = [  # (input NHWC, kernel HWIO, strides, padding, dilations, blocks)
    ((1, 9, 10, 16), (1, 1, 16, 24), 1, "VALID", 1, 1),
    ((2, 9, 10, 16), (1, 1, 16, 20), 2, "SAME", 1, 3),  # partial last group, tile tail
    ((1, 9, 10, 16), (3, 3, 16, 16), 1, "SAME", 1, 2),
    ((2, 11, 7, 8), (3, 3, 8, 12), 2, [[0, 0], [2, 1], [0, 2], [0, 0]], 1, 1),
    ((1, 12, 12, 8), (3, 3, 8, 8), 1, "SAME", 2, 4),  # dilation
    ((1, 15, 15, 3), (7, 7, 3, 10), 2, "SAME", 1, 1),  # 3 input channels: scalar relayout
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("epilogue", [False, True])
def test_matches_float64(case, epilogue):
    shape, kshape, strides, padding, dilations, blocks = CASES[case]
    rng = np.random.default_rng(case)
    w = (rng.standard_normal(kshape) * (rng.random(kshape) < 0.3)).astype(np.float32)
    w[..., 1] = 0.0  # an empty output channel
    bias = rng.standard_normal(kshape[3]).astype(np.float32) if epilogue else None
    wl = ConvWorkload.create(shape, kshape, 1, strides, padding, dilations)
    func = emit(w, shape, wl.output_hw, wl.strides, wl.pads, bias=epilogue, activation="relu" if epilogue else None,
                dilations=wl.dilations, blocks=blocks)
    f = tvm.compile(tvm.IRModule({"sparse_conv2d": func}), target=targets.host_cpu_target())["sparse_conv2d"]
    x = rng.standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    f(*[tvm.runtime.tensor(a) for a in ([x, bias] if epilogue else [x])], out)
    ref = reference.conv2d_f64(x, w, wl, bias)
    if epilogue:
        ref = np.maximum(ref, 0.0)
    got = out.numpy()
    assert np.all(np.isfinite(got))
    assert reference.relative_error(got, ref) < 1e-5
