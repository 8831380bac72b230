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


HALO_CASES = [  # (input NHWC, kernel HWIO, strides, padding, dilations, blocks, lanes)
    ((1, 9, 10, 16), (3, 3, 16, 16), 1, "SAME", 1, 2, 8),  # one segment wider than the row
    ((2, 7, 40, 16), (5, 5, 16, 20), 1, "SAME", 1, 1, 8),  # 5 segments per row; partial last group
    ((1, 12, 12, 8), (3, 3, 8, 8), 1, "SAME", 2, 4, 8),  # dilation
    ((1, 15, 15, 3), (7, 7, 3, 10), (2, 1), "SAME", 1, 1, 8),  # stride 2 down the rows; scalar relayout
    # AVX-512 lanes, asymmetric pads (8 input channels: with 32 its ~24,000 straight-line taps took
    # LLVM 221 s to compile, the slowest test of the suite)
    ((2, 8, 37, 8), (11, 11, 8, 24), 1, [[0, 0], [5, 5], [3, 7], [0, 0]], 1, 2, 16),
]


@pytest.mark.parametrize("case", range(len(HALO_CASES)))
def test_halo_tiles_match_float64(case):
    """Halo tiles (a segment of an output row per iteration, each kernel row's input staged once,
    the taps' vectors loaded at their offsets) against float64, bias and ReLU, NaN-poisoned output."""
    shape, kshape, strides, padding, dilations, blocks, lanes = HALO_CASES[case]
    rng = np.random.default_rng(40 + case)
    w = (rng.standard_normal(kshape) * (rng.random(kshape) < 0.3)).astype(np.float32)
    w[..., 1] = 0.0
    w[1] = 0.0  # a kernel row without nonzeros: not staged
    bias = rng.standard_normal(kshape[3]).astype(np.float32)
    wl = ConvWorkload.create(shape, kshape, 1, strides, padding, dilations)
    func = emit(w, shape, wl.output_hw, wl.strides, wl.pads, bias=True, activation="relu", dilations=wl.dilations,
                blocks=blocks, lanes=lanes, halo=True)
    f = tvm.compile(tvm.IRModule({"sparse_conv2d": func}), target=targets.host_cpu_target())["sparse_conv2d"]
    x = rng.standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    f(tvm.runtime.tensor(x), tvm.runtime.tensor(bias), out)
    ref = np.maximum(reference.conv2d_f64(x, w, wl, bias), 0.0)
    got = out.numpy()
    assert np.all(np.isfinite(got))
    assert reference.relative_error(got, ref) < 1e-5


def test_halo_tiles_refuse_a_stride_along_the_width():
    with pytest.raises(ValueError, match="stride 1 along the width"):
        emit(np.ones((3, 3, 8, 8), np.float32), (1, 9, 9, 8), (4, 4), (2, 2), ((0, 0), (0, 0)), halo=True)


# --- as an algorithm of the library (compile(), records) ---------------------------------------
def _network_layer_with_cpu_records(tmp_path, problem: str):
    """A copy of the znver3 records without the generated algorithms' ones (cpu-register-reuse,
    cpu-csr); a layer of it."""
    import shutil

    from tvm_sparseconv import algorithms, tile_records
    from tvm_sparseconv.tuning_records import logs_root
    from tvm_sparseconv.workloads import workload_set

    folder = tmp_path / "cpu-znver3"
    shutil.copytree(logs_root() / "cpu-znver3", folder)
    for name in ("cpu-register-reuse", "cpu-csr"):
        tile_records.path_for(folder, name).unlink(missing_ok=True)
    p = workload_set(problem)[0]
    kernel = p.sparse_kernel()
    wl = p.workload(kernel)
    return folder, kernel, algorithms.workloads_for(kernel, wl, "llvm"), algorithms.generated_workloads_for(kernel, wl, "llvm")


def test_it_is_offered_for_cpu_layers_within_its_code_size_budget():
    from dataclasses import replace

    from tvm_sparseconv import algorithms
    from tvm_sparseconv.kernel import SparseKernel

    w = np.random.default_rng(0).standard_normal((1, 1, 16, 24)).astype(np.float32)
    kernel = SparseKernel.from_dense(w)
    wl = ConvWorkload.create((1, 5, 5, 16), kernel.shape, kernel.ell_width, 1, "SAME", 1)
    # (cpu-csr, weights as data, is offered for such a 1x1 layer too)
    assert [g.algorithm for g in algorithms.generated_workloads_for(kernel, wl, "llvm")] == ["cpu-register-reuse",
                                                                                              "cpu-csr"]
    assert "cpu-register-reuse" not in [g.algorithm for g in algorithms.generated_workloads_for(kernel, wl, "cuda")]
    algorithm = algorithms.by_name("cpu-register-reuse")
    assert algorithm.applies(replace(wl, kernel_shape=(3, 3, 128, 128), ell_width=152), "llvm")  # conv3 3x3 at 90%
    big = replace(wl, kernel_shape=(1, 1, 256, 1024), ell_width=44)  # conv4 1x1 expand at 90%: 45,056
    assert not algorithm.applies(big, "llvm"), "over the code-size budget"
    many_taps = replace(wl, kernel_shape=(11, 11, 32, 64), ell_width=440)  # the headline: 28,160 possible
    assert not algorithm.applies(many_taps, "llvm"), "over the code-size budget"
    from tvm_sparseconv.schedules.cpu_register_reuse import TILES

    many_taps = replace(many_taps, ell_width=300)  # within the FMA budget: the relayout's rows decide
    assert not algorithm.fits(many_taps, TILES["l16b4"]), "121 taps x 4 channel vectors: too many rows"
    assert algorithm.fits(many_taps, TILES["l16b4h"]), "halo: 11 kernel rows x 4"
    assert not algorithm.fits(replace(many_taps, strides=(1, 2)), TILES["l16b4h"]), "halo needs stride 1 along the width"
    assert algorithm.applies(many_taps, "llvm")


def test_compile_chooses_it_where_its_record_beats_the_scheduled_ones_and_computes_right(tmp_path):
    """With a record faster than the layer's MetaSchedule record, compile() builds this algorithm
    (the record's tile), and the result matches float64 (bias, ReLU, NaN-poisoned output); with a
    slower record it keeps the scheduled algorithm."""
    from tvm_sparseconv import build, tile_records

    folder, kernel, scheduled, generated = _network_layer_with_cpu_records(tmp_path, "resnet50_conv2_1x1_reduce_first_b1")
    target = targets.cpu_target("znver3")
    assert build.choose_generated(kernel, scheduled, generated, target, folder) == (None, None), "no tile record"
    best_us = min(f[1] for f in build._tuned_records(scheduled, target, folder))

    def record(us: float):
        tile_records.write(tile_records.path_for(folder, "cpu-register-reuse"), "cpu-register-reuse", "test", "test",
                           [{"layer": "x", "shape": tile_records.shape_key(generated[0]), "tile": "l8b2",
                             "seconds": us * 1e-6, "nonzeros": kernel.nnz}])

    record(best_us * 1.2)
    assert build.choose_generated(kernel, scheduled, generated, target, folder)[0] is None
    record(best_us * 0.8)
    res = build.build_layer(kernel, scheduled, generated, target, False, folder)
    assert res.workload.algorithm == "cpu-register-reuse"
    assert res.schedule_source == "tuned:cpu-register-reuse l8b2@cpu-znver3"
    wl = res.workload
    x = np.random.default_rng(5).standard_normal(wl.input_shape).astype(np.float32)
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    res.function(tvm.runtime.tensor(x), out)
    ref = reference.conv2d_f64(x, kernel.to_dense(), wl)
    assert reference.relative_error(out.numpy(), ref) < 1e-5


def test_compile_forced_cpu_register_reuse_serves_a_strided_padded_layer_with_bias_and_relu():
    import tvm_sparseconv as tsc

    rng = np.random.default_rng(21)
    w = (rng.standard_normal((3, 3, 16, 20)) * (rng.random((3, 3, 16, 20)) < 0.2)).astype(np.float32)
    w[..., 3] = 0.0
    bias = rng.standard_normal(20).astype(np.float32)
    op = tsc.compile(tsc.SparseKernel.from_dense(w), (2, 9, 11, 16), strides=2, padding="SAME", bias=bias,
                     activation="relu", target="llvm", algorithm="cpu-register-reuse")
    assert op.algorithm == "cpu-register-reuse" and op.schedule_source.startswith(("untuned:", "tuned:"))
    x = rng.standard_normal((2, 9, 11, 16)).astype(np.float32)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32))
    op.run(tvm.runtime.tensor(x), out)
    ref = np.maximum(reference.conv2d_f64(x, w, op.layer_workload, bias), 0.0)
    assert reference.relative_error(out.numpy(), ref) < 1e-5
