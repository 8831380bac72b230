"""GPU tests (marked `gpu`; run on the GPU machine, skipped elsewhere).

Every CUDA schedule (untuned templates and the committed tuning records of this GPU) against a
float64 reference with NaN-poisoned outputs; zero copy from PyTorch CUDA tensors; ordering with
the producer's stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, reference, targets, tuning_records
from tvm_sparseconv.tir_build import compile_tir
from tvm_sparseconv.schedules import rules_for
from tvm_sparseconv.tuning import problem_arguments
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import TINY, workload_set

from cuda_cases import (CASES, CSR_SPLIT_K_CASES, CSR_WEIGHT_PATHS, FUZZ_CASES, FUZZ_SEEDS, sampled_candidates,
                        sparse_kernel as _kernel, use_csr_weight_path)

pytestmark = pytest.mark.gpu
TOL = 1e-5

def _run_schedule(sch, target, wl, arrays):
    dev = tvm.cuda(0)
    lib = compile_tir(sch.mod, target)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
    lib[algorithms.FUNC_NAME](*args, out)
    return out.numpy()


@pytest.mark.parametrize("rule", [r.name for r in rules_for(targets.cuda_target_for_arch())])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_untuned_cuda_templates_match_reference(rule, case):
    """Every CUDA rule (of every algorithm), untuned, on shapes with strides, dilations, paddings,
    batches, several input-channel chunks and an empty output channel."""
    shape, kshape, density, strides, padding, dil, has_bias, act = case
    rng = np.random.default_rng()
    w = _kernel(rng, kshape, density)
    k = tsc.SparseKernel.from_dense(w)
    bias = rng.standard_normal(kshape[3]).astype(np.float32) if has_bias else None
    target = targets.cuda_target()
    rule_obj = next(r for r in rules_for(target) if r.name == rule)
    base = ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil, has_bias, act)
    if not algorithms.by_name(rule_obj.algorithm).applies(base, "cuda"):
        pytest.skip(f"{rule_obj.algorithm} does not compute this layer")
    wl = algorithms.workload_for(k, base, rule_obj.algorithm)
    sch = rule_obj.apply(tuning_records.workload_module(wl)["main"], target, False)
    if sch is None:  # a rule may decline a layer (cuda-ell-splitk takes maps of <= 256 pixels)
        pytest.skip(f"{rule} does not schedule this layer")
    x = rng.standard_normal(shape).astype(np.float32)
    arrays = [x, *algorithms.pack_weights(wl, k)] + ([bias] if has_bias else [])
    y = _run_schedule(sch, target, wl, arrays)
    ref = reference.conv2d_f64(x, w, wl, bias)
    assert reference.relative_error(y, ref) <= algorithms.by_name(wl.algorithm).tolerance


@pytest.mark.parametrize("algorithm", [a.name for a in algorithms.ALGORITHMS.values()
                                       if not a.generated and a.applies(None, "cuda")])
@pytest.mark.parametrize("case", FUZZ_CASES, ids=[f"fuzz{i}" for i in range(len(FUZZ_CASES))])
def test_sampled_design_space_candidates_match_reference(algorithm, case):
    """Random draws from each CUDA design space (what tuning measures) are all correct: tuning
    checks only its best few, so a wrong or racy corner of a space must not exist at all."""
    shape, kshape, density, strides, padding, dil = case
    rng = np.random.default_rng()
    w = _kernel(rng, kshape, density)
    k = tsc.SparseKernel.from_dense(w)
    target = targets.cuda_target()
    wl = algorithms.workload_for(k, ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil), algorithm)
    if not algorithms.by_name(algorithm).applies(wl, "cuda"):
        pytest.skip(f"{algorithm} does not compute this layer")
    x = rng.standard_normal(shape).astype(np.float32)
    arrays = [x, *algorithms.pack_weights(wl, k)]
    ref = reference.conv2d_f64(x, w, wl)
    ran = 0
    for sch in sampled_candidates(wl, target, rng, FUZZ_SEEDS):
        y = _run_schedule(sch, target, wl, arrays)
        err = reference.relative_error(y, ref)
        assert err <= algorithms.by_name(algorithm).tolerance, f"error {err:.2e}; decisions {list(sch.trace.decisions.values())}"
        ran += 1
    assert ran > 0, "every sampled candidate was rejected"


def _committed_entries():
    if not targets.gpu_available():
        return []
    folder = tuning_records.logs_root() / targets.target_folder_name(targets.cuda_target())
    meta = tuning_records.read_meta(folder) or {}
    return [f"{e['problem']}:{e['workload'].get('algorithm', algorithms.DEFAULT)}" for e in meta.get("entries", [])]


@pytest.mark.parametrize("entry", _committed_entries() or ["<no records for this GPU>"])
def test_tuned_records_match_reference(entry):
    if entry.startswith("<"):
        pytest.skip("no committed tuning records for this GPU")
    tuned, error = _replay_committed(entry)
    assert tuned is not None, f"record of {entry} does not apply to its workload"
    assert error <= algorithms.by_name(entry.split(":")[1]).tolerance


@pytest.mark.parametrize("entry", _committed_entries()[::7] or ["<no records for this GPU>"])
def test_tuned_records_serve_layers_with_bias_and_relu(entry):
    """A record tuned without an epilogue, replayed onto its layer with a bias and ReLU (the
    epilogue inlined after the replay), is still right (every 7th record: each rule and algorithm)."""
    if entry.startswith("<"):
        pytest.skip("no committed tuning records for this GPU")
    tuned, error = _replay_committed(entry, has_bias=True, activation="relu")
    assert tuned is not None and not tuned.tuned_workload.has_bias, f"{entry}: no record served it"
    assert error <= algorithms.by_name(entry.split(":")[1]).tolerance


def _replay_committed(entry: str, **changes):
    """(this GPU's record replayed onto the entry's problem with `changes`, or None; its error against
    float64 on fresh inputs, NaN-poisoned output)."""
    problem_name, algorithm = entry.split(":")
    problem = dataclasses.replace(workload_set(problem_name)[0], **changes)
    wl, w, arrays = problem_arguments(problem, seed=int(np.random.SeedSequence().entropy % 1000), algorithm=algorithm)
    tuned = tuning_records.find_tuned_schedule(wl, targets.cuda_target())
    if tuned is None:
        return None, float("inf")
    y = _run_schedule(tuned.schedule, targets.cuda_target(), wl, arrays)
    bias = arrays[-1] if wl.has_bias else None
    return tuned, reference.relative_error(y, reference.conv2d_f64(arrays[0], w, wl, bias))


def test_zero_copy_from_and_to_torch_cuda():
    torch = pytest.importorskip("torch")
    problem = TINY[0]
    k = problem.sparse_kernel()
    op = tsc.compile(k, problem.input_shape, target="cuda")
    x = torch.randn(problem.input_shape, device="cuda")
    view = tsc.interop.to_tvm(x)
    assert view.data_ptr() == x.data_ptr()
    y = op(x)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    ref = reference.conv2d_f64(x.cpu().numpy(), k.to_dense(), op.workload)
    assert reference.relative_error(y.cpu().numpy(), ref) <= TOL
    t = tvm.runtime.empty((4, 64), "float32", tvm.cuda(0))
    assert tsc.interop.from_tvm(t, "torch").data_ptr() == t.data_ptr()


def test_waits_for_the_producer_stream():
    """A producer kernel on a side (non-blocking) stream writes x right before the call."""
    torch = pytest.importorskip("torch")
    problem = TINY[0]
    k = problem.sparse_kernel()
    op = tsc.compile(k, problem.input_shape, target="cuda")
    src = torch.randn(problem.input_shape, device="cuda")
    ref = reference.conv2d_f64(src.cpu().numpy(), k.to_dense(), op.workload)
    for _ in range(3):
        x = torch.full(problem.input_shape, float("nan"), device="cuda")
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time before the write lands
            x.copy_(src)
            y = op(x)  # no synchronisation by the caller
        torch.cuda.synchronize()
        assert reference.relative_error(y.cpu().numpy(), ref) <= TOL


def test_compile_precision_tf32_runs_union_tf32_at_tf32_accuracy():
    """`compile(precision="tf32")` serves a layer with union-tf32 (forced here: no record is
    committed) at TF32's accuracy; the fp32 default never picks it."""
    rng = np.random.default_rng()
    shape, kshape = (2, 8, 8, 96), (1, 1, 96, 40)
    w = _kernel(rng, kshape, 0.2)
    k = tsc.SparseKernel.from_dense(w)
    x = rng.standard_normal(shape).astype(np.float32)
    ref = reference.conv2d_f64(x, w, ConvWorkload.create(shape, kshape, k.ell_width))
    dev = tvm.cuda(0)
    results = {}
    for precision, algorithm in (("tf32", "union-tf32"), ("fp32", None)):
        op = tsc.compile(k, shape, target="cuda", precision=precision, algorithm=algorithm)
        out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
        op.run(tvm.runtime.tensor(x, dev), out)
        results[precision] = (op.workload.algorithm, reference.relative_error(out.numpy(), ref))
    assert results["tf32"][0] == "union-tf32" and 1e-6 < results["tf32"][1] <= 2e-3
    assert results["fp32"][0] != "union-tf32" and results["fp32"][1] <= TOL


def _block_pruned_layer(name: str, algorithm: str):
    """(dense kernel, sparse kernel, `algorithm`'s workload, target, fresh input) of a benchmark layer."""
    problem = workload_set(name)[0]
    w = problem.dense_kernel()
    k = tsc.SparseKernel.from_dense(w)
    wl = problem.workload(k, algorithm=algorithm)
    x = np.random.default_rng().standard_normal(wl.input_shape).astype(np.float32)
    return w, k, wl, targets.cuda_target(), x


@pytest.mark.parametrize("algorithm", ["union-tf32", "union-tf32-async"])
@pytest.mark.parametrize("name,chunk", [
    ("resnet50_conv3_1x1_reduce_b32_g8", 64), ("resnet50_conv3_1x1_reduce_b32_g8", 256),
    ("resnet50_conv4_3x3_b32_g8", None), ("resnet50_conv5_3x3_b32_g8", None),  # staged rows; whole images
    ("resnet50_conv3_3x3_b32_g8", None), ("resnet50_conv1_7x7_s2_b32_g8", None),
    # stride 2, columns staged by phase (`union_tf32.column_phases`): rows; whole images by phase
    # plane at their pitch (`union_tf32.image_plane`; union-tf32-async's at 16 channels a chunk)
    ("resnet50_conv4_3x3_s2_b32_g8", None), ("resnet50_conv5_3x3_s2_b32_g8", None),
])
def test_union_tf32_on_block_pruned_resnet50_layers(name, chunk, algorithm):
    """union-tf32's and union-tf32-async's untuned templates on the block-pruned batch-32 layers
    the benchmarks time (1x1 at two chunk widths, staged 3x3 rows and whole 7x7 images, the 7x7
    stem): TF32 accuracy against float64, on a NaN-poisoned output."""
    from tvm_sparseconv.algorithms.union_tf32 import chunked_format

    w, k, wl, target, x = _block_pruned_layer(name, algorithm)
    if chunk:
        wl = wl.with_format(algorithm, **chunked_format(k, chunk))
    sch = next(r for r in rules_for(target, algorithm)).apply(tuning_records.workload_module(wl)["main"], target, False)
    y = _run_schedule(sch, target, wl, [x, *algorithms.pack_weights(wl, k)])
    assert 1e-6 < reference.relative_error(y, reference.conv2d_f64(x, w, wl)) <= algorithms.by_name(algorithm).tolerance


@pytest.mark.parametrize("cluster", [False, True], ids=["second-kernel", "cluster"])
@pytest.mark.parametrize("algorithm", ["union-tf32", "union-tf32-async"])
@pytest.mark.parametrize("name", ["resnet50_conv4_3x3_b32_g8", "resnet50_conv5_3x3_b32_g8",
                                  "resnet50_conv5_3x3_s2_b32_g8", "resnet50_conv5_1x1_reduce_b32_g8",
                                  "resnet50_conv4_3x3_b1_g8", "resnet50_conv3_3x3_b1_g8",
                                  "resnet50_conv5_1x1_reduce_b1_g8"])
def test_union_tf32_split_reduction_on_block_pruned_resnet50_layers(name, algorithm, cluster):
    """The untuned union templates with the reduction split in 4 shares of the input chunks
    (summed by a second kernel through the epilogue, or by the shares' thread-block cluster over
    distributed shared memory), on the layers short of warps it is meant for: TF32 accuracy
    against float64, on a NaN-poisoned output."""
    import copy

    w, k, wl, target, x = _block_pruned_layer(name, algorithm)
    rule = copy.copy(next(r for r in rules_for(target, algorithm)))  # the registered rule is shared
    rule.reduction_slices, rule.reduction_in_cluster = 4, cluster
    sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
    if sch is None and cluster:
        # (the untuned cluster template declines where its shared partial sums outgrow the
        # staging budget: test_union_tf32_cluster_templates_keep_their_shared_sums_to_a_tile)
        pytest.skip("the cluster's shared partial sums outgrow the staging budget")
    y = _run_schedule(sch, target, wl, [x, *algorithms.pack_weights(wl, k)])
    assert 1e-6 < reference.relative_error(y, reference.conv2d_f64(x, w, wl)) <= algorithms.by_name(algorithm).tolerance


@pytest.mark.parametrize("algorithm", ["union-tf32", "union-tf32-async"])
@pytest.mark.parametrize("name", ["resnet50_conv4_3x3_b32_g8", "resnet50_conv3_3x3_b32_g8",
                                  "resnet50_conv2_3x3_b32_g8"])
def test_union_tf32_tallest_blocks_on_block_pruned_resnet50_layers(name, algorithm):
    """The untuned variants of tall KxK blocks (`untuned_tall_blocks`: the most rows a block
    whose staged box fits, a warp holding all their tiles; conv4 3x3's record on the H100) at
    one and two groups a warp: TF32 accuracy against float64, on a NaN-poisoned output."""
    w, k, wl, target, x = _block_pruned_layer(name, algorithm)
    ref = reference.conv2d_f64(x, w, wl)
    tall = [v for v in next(r for r in rules_for(target, algorithm)).untuned_variants()
            if v.untuned_tall_blocks and v.untuned_kxk_group_cap == 16]
    assert len(tall) == 2
    for rule in tall:
        sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
        y = _run_schedule(sch, target, wl, [x, *algorithms.pack_weights(wl, k)])
        err = reference.relative_error(y, ref)
        assert 1e-6 < err <= algorithms.by_name(algorithm).tolerance, rule.untuned_label()


def test_device_timing_leaves_out_host_overhead_and_call_timing_keeps_it():
    """A known device time (a spin) behind a slow host call: device timing finds the spin's time,
    per-call timing the host's."""
    import time

    torch = pytest.importorskip("torch")
    from tvm_sparseconv import baselines

    cycles, host_s = 40_000, 300e-6  # ~20 us of device work, 300 us of host work per call
    torch.cuda._sleep(cycles)  # its first launch loads the module (~7 ms on an H200)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(cycles * 10)
    b.record()
    b.synchronize()
    spin_s = a.elapsed_time(b) / 1e3 / 10

    def call(i):
        torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < host_s:
            pass

    device = baselines.cuda_event_median(call, repeats=10)
    per_call = baselines.cuda_event_median(call, repeats=10, host_ahead=False)
    assert device == pytest.approx(spin_s, rel=0.3), (device, spin_s)
    assert per_call >= host_s, (per_call, host_s)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("parts", [None, 2])
@pytest.mark.parametrize("layout", ["steps", "groups"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_register_reuse_kernel_matches_float64(strides, layout, parts, splits):
    """The pattern-in-the-code kernel (NVPTX build) against float64, output poisoned; `splits`:
    split-K over blockIdx.z with the workspace and the reducing kernel."""
    from tvm_sparseconv.nvptx_build import compile_nvptx
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile, emit

    rng = np.random.default_rng(7)
    n, h, w_, cin, cout = 3, 9, 11, 40, 36
    w = (rng.standard_normal((cin, cout)) * (rng.random((cin, cout)) < 0.2)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    oh, ow = -(-h // strides[0]), -(-w_ // strides[1])
    tile = Tile(group=16, pixels=32, groups=2, stage=16, regs=8, layout=layout, splits=splits)
    ex = compile_nvptx(lambda llvm: emit(w, (n, h, w_, cin), (oh, ow), strides, ((0, 0), (0, 0)), tile,
                                         bias=True, activation="relu", llvm=llvm, parts=parts))
    x = rng.standard_normal((n, h, w_, cin)).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full((n, oh, ow, cout), np.nan, np.float32), dev)
    ex.mod["sparse_conv2d"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(bias, dev), out)
    xs = x[:, ::strides[0], ::strides[1], :].astype(np.float64)
    ref = np.maximum(np.einsum("nhwc,ck->nhwk", xs, w.astype(np.float64)) + bias, 0.0)
    got = out.numpy()
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < TOL


@pytest.mark.parametrize("tile_options", [dict(layout="steps"), dict(layout="groups", halo=True, splits=2),
                                          dict(layout="groups", halo=True, rows=2)])
def test_register_reuse_fmas_spliced_as_ptx_match_the_tir_build_bit_for_bit(tile_options):
    """The FMAs written as PTX text at markers (compile()'s way) against the same kernel with its
    FMAs compiled by TVM and LLVM, and with the next stage's loads issued halfway through the
    FMAs: the same sums in the same order, so the same bits; within TOL of float64 (padded 3x3,
    stride 2, bias and ReLU, output poisoned)."""
    from tvm_sparseconv.nvptx_build import compile_nvptx
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile, emit

    rng = np.random.default_rng(11)
    x_shape, cin, cout = (2, 13, 15, 24), 24, 40
    w = (rng.standard_normal((3, 3, cin, cout)) * (rng.random((3, 3, cin, cout)) < 0.15)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    wl = ConvWorkload.create(x_shape, w.shape, 1, strides=(2, 2), padding="SAME", has_bias=True, activation="relu")
    tile = Tile(group=16, pixels=32, groups=2, stage=8, regs=8, **tile_options)
    x = rng.standard_normal(x_shape).astype(np.float32)
    dev = tvm.cuda(0)
    got = {}
    for fma_code, prefetch in (("ptx", "start"), ("tir", "start"), ("ptx", "middle")):
        ex = compile_nvptx(lambda llvm: emit(w, x_shape, wl.output_hw, wl.strides, wl.pads,
                                             dataclasses.replace(tile, prefetch=prefetch), bias=True,
                                             activation="relu", llvm=llvm, fma_code=fma_code))
        out = tvm.runtime.tensor(np.full((x_shape[0], *wl.output_hw, cout), np.nan, np.float32), dev)
        ex.mod["sparse_conv2d"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(bias, dev), out)
        got[fma_code if prefetch == "start" else prefetch] = out.numpy()
    ref = np.maximum(reference.conv2d_f64(x, w, wl, bias), 0.0)
    assert np.all(np.isfinite(got["ptx"]))
    assert np.linalg.norm(got["ptx"] - ref) / np.linalg.norm(ref) < TOL
    np.testing.assert_array_equal(got["ptx"], got["tir"])
    np.testing.assert_array_equal(got["ptx"], got["middle"])


def _check_generated_bias_relu(ex, rng, x_shape, w, wl, bias) -> None:
    """A generated module's ``sparse_conv2d(x, bias, out)`` against float64 act(conv + bias), output poisoned."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full((x_shape[0], *wl.output_hw, w.shape[-1]), np.nan, np.float32), dev)
    ex.mod["sparse_conv2d"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(bias, dev), out)
    ref = np.maximum(reference.conv2d_f64(x, w, wl, bias), 0.0)
    got = out.numpy()
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < TOL

def _bias_relu_layer(rng, x_shape, k_shape, strides=1, padding="SAME", dilations=1):
    """(w, bias, kernel, workload) of a random layer with 20% nonzeros, an empty output channel,
    bias and ReLU (the generated kernels' test layer)."""
    w = _kernel(rng, k_shape, 0.2)
    w[..., 1] = 0.0
    bias = rng.standard_normal(k_shape[3]).astype(np.float32)
    kernel = tsc.SparseKernel.from_dense(w)
    wl = ConvWorkload.create(x_shape, kernel.shape, kernel.ell_width, strides, padding, dilations, has_bias=True,
                             activation="relu")
    return w, bias, kernel, wl


def _check_emitted_tiles(seed, x_shape, k_shape, strides, padding, dilations, tiles) -> None:
    """The register-reuse kernel of each of `tiles` for one `_bias_relu_layer` against float64,
    output poisoned."""
    from tvm_sparseconv.nvptx_build import compile_nvptx
    from tvm_sparseconv.schedules.cuda_register_reuse import emit

    rng = np.random.default_rng(seed)
    w, bias, _, wl = _bias_relu_layer(rng, x_shape, k_shape, strides, padding, dilations)
    for tile in tiles:
        ex = compile_nvptx(lambda llvm, tile=tile: emit(w, x_shape, wl.output_hw, wl.strides, wl.pads, tile, bias=True,
                                                        activation="relu", llvm=llvm, dilations=wl.dilations))
        _check_generated_bias_relu(ex, rng, x_shape, w, wl, bias)


@pytest.mark.parametrize("reduce", ["kernel", "cluster"])
@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_register_reuse_split_k_computes_a_padded_kxk_layer(layout, reduce):
    """Split-K (4 shares of the taps' stages) on a padded, strided 3x3 layer with bias and ReLU,
    one output channel empty, against float64, output poisoned: shares added up by a second
    kernel, or by the blocks of a cluster in shared memory."""
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile

    _check_emitted_tiles(17, (2, 11, 13, 20), (3, 3, 20, 40), 2, "SAME", 1,
                         [Tile(group=16, pixels=32, groups=2, stage=8, regs=4, layout=layout, splits=4, reduce=reduce)])


@pytest.mark.parametrize("x_shape,k_shape,strides,options", [
    ((1, 14, 14, 64), (1, 1, 64, 64), 1, dict(pixels=224, groups=1, splits=8)),  # a batch-1 tile: 8 blocks a cluster
    ((1, 7, 7, 48), (1, 1, 48, 42), 2, dict(pixels=64, groups=1, splits=5)),  # Cout 42: scalar slices, 7 x 7 map
    ((2, 9, 70, 20), (5, 5, 20, 40), 2, dict(pixels=32, groups=2, splits=3, halo=True)),  # halo, stride 2
    ((2, 14, 14, 20), (3, 3, 20, 40), 1, dict(pixels=32, groups=2, splits=2, halo=True)),  # 2 whole rows per block
])
def test_register_reuse_cluster_reduction_computes_layers(x_shape, k_shape, strides, options):
    """`Tile.reduce` "cluster" (split-K shares added up across a cluster's shared memory)
    against float64, output poisoned, an empty output channel, bias and ReLU, both layouts."""
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile

    _check_emitted_tiles(41, x_shape, k_shape, strides, "SAME", 1, [
        Tile(group=8, stage=8, regs=4, layout=layout, reduce="cluster", **options) for layout in ("steps", "groups")])


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilations,splits", [
    ((2, 7, 45, 20), (3, 3, 20, 40), 1, "SAME", 1, 1),  # 2 segments per row, the last partial
    ((2, 9, 70, 20), (5, 5, 20, 40), 2, "SAME", 1, 3),  # stride 2, split-K
    ((1, 12, 40, 16), (3, 3, 16, 36), 1, "VALID", 2, 1),  # dilation 2
    ((2, 15, 37, 3), (7, 7, 3, 16), 2, [[0, 0], [3, 2], [1, 3], [0, 0]], 1, 1),  # Cin 3: scalar copies
    ((2, 14, 14, 20), (3, 3, 20, 40), 1, "SAME", 1, 1),  # narrow map: 2 whole rows per block
    ((3, 13, 13, 16), (3, 3, 16, 36), 2, "SAME", 1, 2),  # 7 x 7 out: 4 rows per block, the last partial
])
def test_register_reuse_halo_tiles_compute_kxk_layers(x_shape, k_shape, strides, padding, dilations, splits):
    """Halo tiles (a block: a segment of one output row; each kernel row's input staged once with
    its halo, the taps read from shared memory at their offsets) against float64, output
    poisoned, an empty output channel, bias and ReLU, in both layouts."""
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile

    _check_emitted_tiles(23, x_shape, k_shape, strides, padding, dilations, [
        Tile(group=16, pixels=32, groups=2, stage=8, regs=4, layout=layout, splits=splits, halo=True)
        for layout in ("steps", "groups")])


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilations,rows", [
    ((2, 7, 45, 20), (3, 3, 20, 40), 1, "SAME", 1, 2),  # 7 rows: the last block's second row past the image
    ((2, 9, 70, 20), (5, 5, 20, 40), 2, "SAME", 1, 3),  # stride 2: rows p and p + 1 share input rows
    ((1, 12, 40, 16), (3, 3, 16, 36), 1, "VALID", 2, 2),  # dilation 2
    ((2, 15, 37, 3), (7, 7, 3, 16), 2, [[0, 0], [3, 2], [1, 3], [0, 0]], 1, 2),  # Cin 3: scalar copies
    ((2, 14, 14, 20), (3, 3, 20, 40), 1, "SAME", 1, 2),  # narrow map: 2 thread rows of 2 output rows
    ((3, 13, 13, 16), (3, 3, 16, 36), 2, "SAME", 1, 3),  # 7 x 7 out: 4 thread rows of 3, rows past the image
])
def test_register_reuse_tiles_of_several_rows_per_thread_compute_kxk_layers(x_shape, k_shape, strides, padding,
                                                                           dilations, rows):
    """Halo tiles whose threads hold `rows` consecutive output rows (`Tile.rows`: each staged input
    row feeds every kernel row that reads it) against float64, output poisoned, an empty output
    channel, bias and ReLU: both layouts, the next stage's loads at the start and halfway."""
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile

    _check_emitted_tiles(29, x_shape, k_shape, strides, padding, dilations, [
        Tile(group=16, pixels=32, groups=2, stage=8, regs=4, layout=layout, halo=True, rows=rows, prefetch=prefetch)
        for layout, prefetch in (("steps", "start"), ("groups", "middle"))])


@pytest.mark.parametrize("x_shape,k_shape,strides,options", [
    ((3, 9, 11, 40), (1, 1, 40, 36), 1, dict(splits=3, loops=3)),  # 10 pixel tiles in 4 blocks: the last one short
    ((2, 9, 12, 20), (3, 3, 20, 40), 2, dict(loops=2)),  # per-tap stages, stride 2
    ((2, 7, 45, 20), (3, 3, 20, 40), 1, dict(halo=True, loops=3)),  # halo: 14 rows x 2 segments
    ((3, 13, 13, 16), (3, 3, 16, 36), 1, dict(halo=True, rows=2, loops=2)),  # rows per thread too
])
def test_register_reuse_blocks_looping_over_pixel_tiles_compute_layers(x_shape, k_shape, strides, options):
    """`Tile.loops`: each block computes several pixel tiles in turn (its sums zeroed again per
    tile), against float64, output poisoned, an empty output channel, bias and ReLU, both
    layouts."""
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile

    _check_emitted_tiles(37, x_shape, k_shape, strides, "SAME", 1, [
        Tile(group=16, pixels=32, groups=1, stage=8, regs=4, layout=layout, **options)
        for layout in ("steps", "groups")])


def test_register_reuse_tile_of_several_rows_compiled_in_pieces_matches_float64(monkeypatch):
    """A `Tile.rows` tile through `RegisterReuse.build` with its code in pieces (one per channel
    block, joined into one kernel), padded 3x3, bias and ReLU, output poisoned."""
    from tvm_sparseconv import algorithms as algs
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    rng = np.random.default_rng(31)
    x_shape, k_shape = (2, 9, 40, 16), (3, 3, 16, 64)
    w, bias, kernel, wl = _bias_relu_layer(rng, x_shape, k_shape)
    tile = rr.Tile(group=16, pixels=32, groups=2, stage=8, regs=4, layout="groups", halo=True, rows=2)
    monkeypatch.setattr(rr, "FMAS_PER_PIECE", -(-kernel.nnz * 2 // 2))
    assert rr.pieces_for(kernel.nnz * 2, k_shape[3], tile) == 2
    ex = algs.by_name("register-reuse").build(kernel, wl, tile)
    _check_generated_bias_relu(ex, rng, x_shape, w, wl, bias)


@pytest.mark.parametrize("apart", [False, True], ids=["joined", "linked"])
@pytest.mark.parametrize("splits, pieces, reduce", [(1, 3, "kernel"), (3, 3, "kernel"), (3, 6, "kernel"),
                                                    (3, 3, "cluster")])
def test_register_reuse_code_in_pieces_made_one_kernel_matches_float64(splits, pieces, reduce, apart, monkeypatch):
    """Long code compiled in pieces (child processes) made one kernel that runs them in turn
    (`nvptx_build.compile_nvptx_pieces`: joined into one PTX module, or each its own object,
    linked), padded 3x3, bias and ReLU, output poisoned; with split-K the tail kernel adds up the
    shares (or, `Tile.reduce` "cluster", the blocks of each cluster), and 6 pieces cut each of the 3
    channel blocks' 3 shares in 2 pieces."""
    from tvm_sparseconv import algorithms as algs
    from tvm_sparseconv.algorithms import register_reuse
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    rng = np.random.default_rng(19)
    x_shape, k_shape = (2, 9, 10, 16), (3, 3, 16, 48)
    w, bias, kernel, wl = _bias_relu_layer(rng, x_shape, k_shape)
    tile = rr.Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout="groups", splits=splits, reduce=reduce)
    monkeypatch.setattr(rr, "FMAS_PER_PIECE", -(-kernel.nnz // pieces))
    monkeypatch.setattr(rr, "FMAS_PER_LINKED_PIECE", -(-kernel.nnz // pieces))
    if apart:
        monkeypatch.setattr(register_reuse, "MAX_JOINED_FMAS", 0)
    assert rr.pieces_for(kernel.nnz, k_shape[3], tile, splits=rr.split_count(w, tile)) == pieces
    ex = algs.by_name("register-reuse").build(kernel, wl, tile)
    _check_generated_bias_relu(ex, rng, x_shape, w, wl, bias)


def test_compile_forced_register_reuse_serves_a_layer_with_bias_and_relu():
    """compile(..., algorithm="register-reuse") end to end on the GPU: arguments x, bias, out."""
    rng = np.random.default_rng(11)
    w = _kernel(rng, (1, 1, 48, 40), 0.2)
    bias = rng.standard_normal(40).astype(np.float32)
    kernel = tsc.SparseKernel.from_dense(w)
    op = tsc.compile(kernel, (2, 9, 10, 48), strides=2, bias=bias, activation="relu", target="cuda",
                     algorithm="register-reuse")
    assert op.algorithm == "register-reuse" and "register-reuse" in op.schedule_source
    x = rng.standard_normal((2, 9, 10, 48)).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
    op.run(tvm.runtime.tensor(x, dev), out)
    got = out.numpy()
    ref = np.maximum(np.einsum("nhwc,ck->nhwk", x[:, ::2, ::2, :].astype(np.float64), w[0, 0].astype(np.float64))
                     + bias, 0.0)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < TOL


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilations", [
    ((2, 11, 13, 20), (3, 3, 20, 40), 1, "SAME", 1),
    ((2, 11, 13, 20), (3, 3, 20, 40), 2, "SAME", 1),
    ((1, 12, 12, 16), (3, 3, 16, 36), 1, "VALID", 2),
    ((2, 15, 15, 3), (7, 7, 3, 16), 2, [[0, 0], [3, 2], [1, 3], [0, 0]], 1),  # Cin 3: scalar copies
])
def test_compile_forced_register_reuse_computes_kxk_layers(x_shape, k_shape, strides, padding, dilations):
    """KxK kernels (each tap a 1x1 step on the shifted input) against float64, output poisoned,
    with an empty output channel and bias + ReLU."""
    rng = np.random.default_rng(13)
    w = _kernel(rng, k_shape, 0.2)
    w[..., 1] = 0.0
    bias = rng.standard_normal(k_shape[3]).astype(np.float32)
    kernel = tsc.SparseKernel.from_dense(w)
    op = tsc.compile(kernel, x_shape, strides=strides, padding=padding, dilations=dilations, bias=bias,
                     activation="relu", target="cuda", algorithm="register-reuse")
    assert op.algorithm == "register-reuse"
    x = rng.standard_normal(x_shape).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
    op.run(tvm.runtime.tensor(x, dev), out)
    got = out.numpy()
    ref = np.maximum(reference.conv2d_f64(x, w, op.workload, bias), 0.0)
    assert np.all(np.isfinite(got))
    assert reference.relative_error(got, ref) < TOL


@pytest.mark.parametrize("problem", ["resnet50_conv2_1x1_reduce_first_b1", "resnet50_conv4_3x3_b1"])
def test_a_record_of_another_gpu_of_the_architecture_is_used_and_verified(problem, tmp_path, monkeypatch, cache_dir):
    """This GPU's records, copied as another sm_90 GPU's ("nvidia-x200") and its own folder gone:
    compile() uses them (a register-reuse tile, a MetaSchedule record), checks them against float64
    on first use (the verdict kept beside the module) and computes the layer correctly."""
    import json
    import shutil

    from tvm_sparseconv import module_cache

    own = targets.target_folder_name(targets.cuda_target())
    root = tmp_path / "logs"
    shutil.copytree(tuning_records.logs_root() / own, root / "nvidia-x200")
    meta = json.loads((root / "nvidia-x200" / "meta.json").read_text())
    (root / "nvidia-x200" / "meta.json").write_text(json.dumps({**meta, "device_name": "NVIDIA X200"}))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    p = workload_set(problem)[0]
    kernel = p.sparse_kernel()
    op = tsc.compile(kernel, p.input_shape, strides=p.strides, padding=p.padding, target="cuda")
    family = targets.target_isa_family(targets.cuda_target())
    assert op.schedule_source.endswith(f"@nvidia-x200 (family {family}, verified here)"), op.schedule_source
    verdict = module_cache.read_verdict(op._build.cache_path)
    assert verdict is not None and verdict["ok"] and verdict["record"] == "nvidia-x200", verdict
    rng = np.random.default_rng(5)
    x = rng.standard_normal(p.input_shape).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
    op.run(tvm.runtime.tensor(x, dev), out)
    ref = reference.conv2d_f64(x, kernel.to_dense(), p.workload(kernel))
    assert reference.relative_error(out.numpy(), ref) < TOL


def test_the_tuners_final_timing_runs_each_kernel_on_inputs_rotated_past_l2():
    """On this GPU the tuner's final timing (its time is what a record stores) calls each kernel as
    the benchmarks do: back to back on a rotation of inputs larger than the L2 cache, device time
    from CUDA events. Each candidate gets a finite per-call time, and the kernel still computes the
    layer afterwards."""
    from tvm_sparseconv import baselines
    from tvm_sparseconv.tuning import LocalSite, _checked_error, _seconds_in_turns
    from tvm_sparseconv.workloads import Problem

    problem = Problem("rotated", (8, 28, 28, 128), (1, 1, 128, 128), 0.1)
    target = targets.cuda_target()
    wl, dense_w, arrays = problem_arguments(problem)
    sch = next(s for s in (r.apply(tuning_records.workload_module(wl)["main"], target, False)
                           for r in rules_for(target) if r.algorithm == wl.algorithm) if s is not None)
    site = LocalSite(tvm.cuda(0))
    lib = compile_tir(sch.mod, target)
    assert baselines.rotation_count(int(np.prod(wl.input_shape)) * 4) > 1
    seconds = _seconds_in_turns([lib, lib], site, arrays, wl, rounds=3)
    assert all(np.isfinite(s) and 0 < s < 1e-2 for s in seconds), seconds
    assert _checked_error(lib, site, arrays, wl, reference.conv2d_f64(arrays[0], dense_w, wl)) < TOL


def test_tune_py_searches_register_reuse_tiles_and_compile_uses_the_winner(tmp_path, monkeypatch, cache_dir):
    """`scripts/tune.py --algorithm register-reuse` on this GPU: two tiles built, checked against
    float64, timed beside the layer's scheduled choice; a recorded winner is what compile() builds."""
    import json
    import sys
    from pathlib import Path

    from tvm_sparseconv import tile_records

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import tune

    root = tmp_path / "logs"
    folder = root / targets.target_folder_name(targets.cuda_target())
    summary = tmp_path / "summary.json"
    tiles = ["g32p32x2s4G", "g16p32x2G"]
    assert tune.main(["--algorithm", "register-reuse", "--workloads", "resnet50_conv2_1x1_reduce_first_b1",
                      "--tiles", ",".join(tiles), "--out", str(folder), "--summary-json", str(summary)]) == 0
    row = json.loads(summary.read_text())["workloads"][0]
    assert set(row["tiles"]) == set(tiles) and all(t["relative_error"] <= TOL for t in row["tiles"].values()), row
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(root))
    p = workload_set("resnet50_conv2_1x1_reduce_first_b1")[0]
    kernel = p.sparse_kernel()
    op = tsc.compile(kernel, p.input_shape, strides=p.strides, padding=p.padding, target="cuda")
    if row["recorded"]:
        assert op.schedule_source == f"tuned:register-reuse {row['recorded']}@{folder.name}"
        assert tile_records.find(folder, "register-reuse", op.workload, kernel.nnz)["tile"] == row["recorded"]
    else:
        assert "slower than" in row["why_not"] and op.algorithm != "register-reuse"
    x = np.random.default_rng(4).standard_normal(p.input_shape).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
    op.run(tvm.runtime.tensor(x, dev), out)
    assert reference.relative_error(out.numpy(), reference.conv2d_f64(x, kernel.to_dense(), p.workload(kernel))) < TOL


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,bias,activation,tile", CSR_SPLIT_K_CASES)
@pytest.mark.parametrize("weights_in", CSR_WEIGHT_PATHS)
def test_csr_split_k_computes_1x1_layers(x_shape, k_shape, strides, padding, bias, activation, tile, weights_in,
                                         monkeypatch):
    """csr-split-k against float64 on a grid of 1x1 layers (split chunks, tails, strides, padding,
    bias and activations, an empty output channel; atomics or a cluster reduction), output
    poisoned, twice (the atomics' first kernel must reset the output every call); the blocks'
    weights read from global memory (the default), also with v8's pipelined walk (`PIPELINED`)
    and v9's 4 loads per item per step (`LOADS_PER_ITEM`), or staged in shared memory."""
    use_csr_weight_path(monkeypatch, weights_in)
    rng = np.random.default_rng(17)
    w = _kernel(rng, k_shape, 0.2)
    w[..., 1] = 0.0
    b = rng.standard_normal(k_shape[3]).astype(np.float32) if bias else None
    kernel = tsc.SparseKernel.from_dense(w)
    alg = algorithms.by_name("csr-split-k")
    wl = ConvWorkload.create(x_shape, kernel.shape, kernel.ell_width, strides, padding, 1, has_bias=bias,
                             activation=activation)
    wl = algorithms.workload_for(kernel, wl, alg.name)
    assert alg.fits(wl, alg.tiles()[tile])
    assert (alg.weights_segment(kernel, wl, alg.tiles()[tile]) is None) == weights_in.startswith("global")
    func = alg.build(kernel, wl, alg.tiles()[tile])["sparse_conv2d"]
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(a, dev) for a in alg.pack(wl, kernel) + ([b] if bias else [])]
    for _ in range(2):
        x = rng.standard_normal(x_shape).astype(np.float32)
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
        func(tvm.runtime.tensor(x, dev), *args, out)
        ref = reference.conv2d_f64(x, w, wl, b)
        if activation == "relu":
            ref = np.maximum(ref, 0.0)
        elif activation == "relu6":
            ref = np.clip(ref, 0.0, 6.0)
        got = out.numpy()
        assert np.all(np.isfinite(got))
        assert reference.relative_error(got, ref) < TOL
    if alg.tiles()[tile].reduce == "cluster":  # a fixed order of the chunks: the same bits every call
        again = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
        func(tvm.runtime.tensor(x, dev), *args, again)
        assert np.array_equal(again.numpy(), got)


def test_compile_forced_csr_split_k_serves_a_layer():
    """compile(..., algorithm="csr-split-k") end to end: the op passes its weight arrays."""
    rng = np.random.default_rng(19)
    w = _kernel(rng, (1, 1, 256, 64), 0.1)
    bias = rng.standard_normal(64).astype(np.float32)
    kernel = tsc.SparseKernel.from_dense(w)
    op = tsc.compile(kernel, (1, 7, 7, 256), bias=bias, activation="relu", target="cuda", algorithm="csr-split-k")
    assert op.algorithm == "csr-split-k"
    x = rng.standard_normal((1, 7, 7, 256)).astype(np.float32)
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, np.float32), dev)
    op.run(tvm.runtime.tensor(x, dev), out)
    got = out.numpy()
    ref = np.maximum(np.einsum("nhwc,ck->nhwk", x.astype(np.float64), w[0, 0].astype(np.float64)) + bias, 0.0)
    assert reference.relative_error(got, ref) < TOL
