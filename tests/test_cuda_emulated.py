"""The CUDA kernels run on the CPU (`tvm_sparseconv.cuda_emulator`), against float64, in CI.

The same builds the GPU runs (TVM's CUDA C and its launch sequence) compute the layers of
`tests/test_gpu.py` here, with NaN-poisoned outputs and fresh inputs: every untuned CUDA template,
every committed CUDA record, and csr-split-k's tiles and records. This checks their logic (index
arithmetic, bounds, barriers, cluster reductions, union-tf32's tensor-core mma, the launches), not
their speed; the GPU tests stay the word on a device. Not emulated (declined, tested so): other
inline PTX, and register-reuse (built through LLVM's NVPTX backend, not TVM's CUDA C).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil

import numpy as np
import pytest

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, reference, targets, tile_records, tuning_records
from tvm_sparseconv.algorithms import union_tf32
from tvm_sparseconv.cuda_emulator import EmulatedFault, EmulatedModule, EmulationUnsupported, emulate, lower
from tvm_sparseconv.schedules import rules_for
from tvm_sparseconv.schedules.cuda_union_tf32 import skip_padding_steps
from tvm_sparseconv.tir_build import SKIP_STEPS_ATTR
from tvm_sparseconv.tuning import problem_arguments, reduction_in_cluster, reduction_shares
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import random_pruned_kernel, workload_set

from conftest import grid_blocks
from cuda_cases import (CASES, CSR_SPLIT_K_CASES, CSR_WEIGHT_PATHS, FUZZ_CASES, replayed, sampled_candidates,
                        sparse_kernel, use_csr_weight_path, with_late_cache_write)
from test_tuning_logs import LOGS, _cuda_entries_with_rule

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator compiles with g++")
TARGET = targets.cuda_target_for_arch("sm_90")
CSR = algorithms.by_name("csr-split-k")
#: every committed CUDA record (folder, problem, workload, arch)
RECORDS = [e[:4] for e in _cuda_entries_with_rule()]


def _layer(case, seed: int, algorithm: str):
    shape, kshape, density, strides, padding, dil, has_bias, act = case
    rng = np.random.default_rng(seed)
    w = sparse_kernel(rng, kshape, density)
    k = tsc.SparseKernel.from_dense(w)
    bias = rng.standard_normal(kshape[3]).astype(np.float32) if has_bias else None
    layer = ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil, has_bias, act)
    if not algorithms.by_name(algorithm).applies(layer, "cuda"):
        pytest.skip(f"{algorithm} does not compute this layer")
    wl = algorithms.workload_for(k, layer, algorithm)
    x = rng.standard_normal(shape).astype(np.float32)
    return w, k, bias, wl, x


def _error(em: EmulatedModule, inputs: list[np.ndarray], w, wl, bias) -> float:
    out = np.full(wl.output_shape, np.nan, np.float32)
    em(*inputs, out)
    assert np.all(np.isfinite(out)), "outputs left unwritten (NaN)"
    return reference.relative_error(out, reference.conv2d_f64(inputs[0], w, wl, bias))


@pytest.mark.parametrize("rule", [r.name for r in rules_for(TARGET)])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_untuned_cuda_templates_compute_layers(rule, case):
    """Every CUDA rule's untuned schedule (strides, dilations, paddings, batches, several input
    chunks, an empty output channel, a kernel of zeros, bias and activations)."""
    rule_obj = next(r for r in rules_for(TARGET) if r.name == rule)
    w, k, bias, wl, x = _layer(case, seed=CASES.index(case), algorithm=rule_obj.algorithm)
    sch = rule_obj.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
    if sch is None:
        pytest.skip(f"{rule} does not schedule this layer")
    inputs = [x, *algorithms.pack_weights(wl, k)] + ([bias] if bias is not None else [])
    assert _error(emulate(sch.mod, TARGET), inputs, w, wl, bias) <= algorithms.by_name(wl.algorithm).tolerance


#: (rule, index) of each untuned variant other than a rule's own (`SparseConvRule.untuned_variants`)
UNTUNED_VARIANTS = [(r.name, i) for r in rules_for(TARGET) for i in range(1, len(r.untuned_variants()))]


@pytest.mark.parametrize("rule,variant", UNTUNED_VARIANTS, ids=[f"{r}-{i}" for r, i in UNTUNED_VARIANTS])
def test_the_untuned_variants_tuning_times_compute_layers(rule, variant):
    """Tuning times these beside its search's best and may keep one as the record (union-tf32: its
    unroll pairs and group counts a warp): each computes a KxK and a 1x1 layer."""
    rule_obj = next(r for r in rules_for(TARGET) if r.name == rule).untuned_variants()[variant]
    for seed, case in enumerate([((2, 20, 20, 40), (3, 3, 40, 32), 0.3, 1, "SAME", 1, True, "relu"),
                                 ((2, 8, 8, 40), (1, 1, 40, 32), 0.3, 1, "VALID", 1, False, None)]):
        w, k, bias, wl, x = _layer(case, seed=seed, algorithm=rule_obj.algorithm)
        sch = rule_obj.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
        if sch is None and getattr(rule_obj, "reduction_slices", 1) > 1:
            continue  # shares that do not divide the layer's chunks (test_union_tf32_split_reduction_...)
        assert sch is not None, (rule_obj.untuned_label(), case)
        inputs = [x, *algorithms.pack_weights(wl, k)] + ([bias] if bias is not None else [])
        err = _error(emulate(sch.mod, TARGET), inputs, w, wl, bias)
        assert err <= algorithms.by_name(wl.algorithm).tolerance, (rule_obj.untuned_label(), case, err)


@pytest.mark.parametrize("rule", ["cuda-union-tf32", "cuda-union-tf32-async"])
@pytest.mark.parametrize("case", [((2, 14, 14, 64), (3, 3, 64, 32), 1, "SAME", 1),
                                  ((1, 14, 14, 32), (3, 3, 32, 16), 1, [[1, 1], [0, 2]], 1)],
                         ids=["3x3", "3x3-asymmetric-padding"])
def test_union_tf32_tallest_kxk_blocks_compute_layers(rule, case):
    """The untuned variants of tall KxK blocks (`untuned_tall_blocks`: 7 of 14 grid rows a block,
    a warp holding all 7 tiles, against the format's 2) stage taller boxes, in fewer blocks, and
    compute the layer."""
    shape, kshape, strides, padding, dil = case
    variants = [v for v in next(r for r in rules_for(TARGET) if r.name == rule).untuned_variants()
                if v.untuned_tall_blocks]
    assert variants
    w, k, bias, wl, x = _layer((shape, kshape, 0.3, strides, padding, dil, False, None), seed=7,
                               algorithm=variants[0].algorithm)
    func = tuning_records.workload_module(wl)["main"]
    assert int(func.attrs[union_tf32.BLOCK_ATTR]["rows"]) == 2  # the format's rows (an even tile count)

    inputs = [x, *algorithms.pack_weights(wl, k)]
    for variant in variants:
        sch = variant.apply(func, TARGET, False)
        twin = copy.copy(variant)
        twin.untuned_tall_blocks = False
        assert grid_blocks(sch.mod) * 7 == grid_blocks(twin.apply(func, TARGET, False).mod) * 2, variant.untuned_label()
        assert _error(emulate(sch.mod, TARGET), inputs, w, wl, None) <= algorithms.by_name(wl.algorithm).tolerance


SPLIT_CASES = [((2, 8, 8, 1024), (1, 1, 1024, 32), "VALID"), ((1, 7, 7, 512), (1, 1, 512, 64), "VALID"),
               ((2, 9, 9, 128), (3, 3, 128, 32), "SAME"), ((2, 7, 7, 128), (3, 3, 128, 16), "SAME")]
SPLIT_IDS = ["1x1", "1x1-padded-tiles", "3x3", "3x3-whole-images"]


def _split_layer(rule: str, slices: int, case, cluster: bool):
    """A layer denser in later input channels, its workload, and `rule`'s untuned schedule with the
    reduction split in `slices` shares (summed by a second kernel or in a cluster)."""
    shape, kshape, padding = case
    rng = np.random.default_rng(slices)
    w = rng.standard_normal(kshape).astype(np.float32) * (
        rng.random(kshape) < np.linspace(0.02, 0.5, kshape[2])[None, None, :, None])
    k = tsc.SparseKernel.from_dense(w)
    bias = rng.standard_normal(kshape[3]).astype(np.float32)
    layer = ConvWorkload.create(shape, kshape, k.ell_width, 1, padding, 1, True, "relu")
    split = copy.copy(next(r for r in rules_for(TARGET) if r.name == rule))  # the registered rule is shared
    split.reduction_slices, split.reduction_in_cluster = slices, cluster
    wl = algorithms.workload_for(k, layer, split.algorithm)
    sch = split.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
    x = rng.standard_normal(shape).astype(np.float32)
    return sch, wl, [x, *algorithms.pack_weights(wl, k), bias], w, bias


@pytest.mark.parametrize("cluster", [False, True], ids=["second-kernel", "cluster"])
@pytest.mark.parametrize("rule", ["cuda-union-tf32", "cuda-union-tf32-async"])
@pytest.mark.parametrize("slices", [2, 4])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=SPLIT_IDS)
def test_union_tf32_split_reduction_computes_layers_and_skips_by_each_chunks_own_steps(rule, slices, case, cluster):
    """A union kernel whose chunks are split in shares (`reduction_slices`: partial sums a grid
    each, summed by a second kernel into the epilogue, or in one kernel by each tile's cluster of
    shares) computes the layer, with the padding k steps skipped by each chunk's own count: the
    kernel is denser in later input channels, so the shares' chunks take different steps (read a
    share's counts from the first share's chunks and the error is 0.4-0.5)."""
    sch, wl, inputs, w, bias = _split_layer(rule, slices, case, cluster)
    if case is SPLIT_CASES[1] and slices == 4:  # its 512 channels are 2 chunks of 256
        assert sch is None
        pytest.skip("4 shares of 2 chunks: declined")
    launches = lower(sch.mod, TARGET).launches
    # the partial sums, then their sum; or one kernel, a tile's shares a cluster
    assert [lc.cluster for lc in launches] == ([(1, slices, 1)] if cluster else [(1, 1, 1)] * 2)
    assert reduction_shares(sch.trace) == slices and reduction_in_cluster(sch.trace) == cluster
    assert not skip_padding_steps(sch.mod["main"]).same_as(sch.mod["main"])  # the build skips here too
    err = _error(emulate(sch.mod, TARGET), inputs, w, wl, bias)
    assert err <= algorithms.by_name(wl.algorithm).tolerance, err


@pytest.mark.parametrize("case", SPLIT_CASES[1:3], ids=SPLIT_IDS[1:3])
def test_union_tf32_cluster_sum_reads_every_share_from_its_own_block(case, monkeypatch):
    """Without the build step that makes share s a read of block s's shared memory (`cluster_sums`),
    the schedule's sum adds the block's own share S times: wrong by far more than TF32."""
    from tvm_sparseconv.schedules import cuda_union_tf32

    sch, wl, inputs, w, bias = _split_layer("cuda-union-tf32", 2, case, True)
    assert _error(emulate(sch.mod, TARGET), inputs, w, wl, bias) <= algorithms.by_name(wl.algorithm).tolerance
    monkeypatch.setattr(cuda_union_tf32, "cluster_sums", lambda f: f)
    assert _error(emulate(sch.mod, TARGET), inputs, w, wl, bias) > 0.1


def _union_tf32_program():
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32")
    w, k, bias, wl, x = _layer(CASES[0], 0, rule.algorithm)
    sch = rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
    return lower(sch.mod, TARGET), [x, *algorithms.pack_weights(wl, k)] + ([bias] if bias is not None else []), w, wl, bias


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("name", ["resnet50_conv5_1x1_reduce_b32_g8", "resnet50_conv4_3x3_b32_g8",
                                  "resnet50_conv4_3x3_b1_g8", "resnet50_conv5_1x1_reduce_b1_g8"])
def test_union_tf32_cluster_templates_keep_their_shared_sums_to_a_tile(name):
    """The untuned cluster template of a layer keeps each block's partial sums to its own tile
    (TVM merges them into the staging buffer), and ptxas takes it for sm_90: bound to blockIdx.y,
    the sum's slices made TVM keep every pixel's row (800 KB on conv5 1x1 reduce b32, refused)."""
    from tvm.support import nvcc

    from tvm_sparseconv.tir_build import compile_tir

    problem = workload_set(name)[0].for_target("cuda")
    k = problem.sparse_kernel()
    wl = algorithms.workload_for(k, problem.workload(k), "union-tf32")
    rule = copy.copy(next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32"))
    rule.reduction_slices, rule.reduction_in_cluster = 4, True
    sch = rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
    program = lower(sch.mod, TARGET)
    assert [lc.cluster for lc in program.launches] == [(1, 4, 1)]
    shared = [int(n) * 4 for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", program.source)]
    assert sum(shared) <= rule.tile_budget(), shared
    src = next(m for m in compile_tir(sch.mod, TARGET).mod.imports if m.kind == "cuda").inspect_source()
    with TARGET:
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")) > 0


def test_inline_ptx_it_does_not_know_is_declined_by_name():
    program, *_ = _union_tf32_program()
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32" in program.source
    other = dataclasses.replace(program, source=program.source.replace("m16n8k8.row.col", "m16n8k4.row.col"))
    with pytest.raises(EmulationUnsupported, match="asm"):
        EmulatedModule(other)


def test_tensor_core_fragments_follow_ptx_layout():
    """union-tf32's mma at TF32 accuracy; with the B fragment's two registers swapped (k rows
    0-3 and 4-7 exchanged), wrong."""
    program, inputs, w, wl, bias = _union_tf32_program()
    assert 2e-5 < _error(EmulatedModule(program), inputs, w, wl, bias) < algorithms.by_name(wl.algorithm).tolerance
    b0, b1 = '"r"(((unsigned *)(weights_warp_ptr + 0))[0])', '"r"(((unsigned *)(weights_warp_ptr + 0))[1])'
    assert program.source.count(b0 + ", " + b1) == 1
    swapped = dataclasses.replace(program, source=program.source.replace(b0 + ", " + b1, b1 + ", " + b0))
    assert _error(EmulatedModule(swapped), inputs, w, wl, bias) > 1e-2


def test_union_tf32_on_block_pruned_channels_does_only_their_taps():
    """Kernels pruned in blocks of 8 output channels (`workloads.random_pruned_kernel(block=8)`): a
    group's union is its block's taps, so union-tf32's K shrinks to them (padded to 8) and the
    layer stays right at TF32 accuracy; the elementwise kernel of the same density needs 3x the K.
    Wider chunks (`union_tf32.chunked_format`) pad less and stage fewer pixels per block, within
    48 KB of shared memory."""
    shape, kshape = (2, 8, 8, 520), (1, 1, 520, 24)
    rng = np.random.default_rng(5)
    union = algorithms.by_name("union-tf32")
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32")
    x = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    kernels = {block: random_pruned_kernel(kshape, 0.1, rng, block=block) for block in (8, 1)}
    layer = ConvWorkload.create(shape, kshape, 1, 1, "SAME", 1, True, "relu")
    widths = {block: algorithms.workload_for(tsc.SparseKernel.from_dense(w), layer, union.name).ell_width
              for block, w in kernels.items()}
    w = kernels[8]
    step = union_tf32.CHUNK_1X1  # the default chunk width
    longest = max(int((w[0, 0, c:c + step, ::8] != 0).sum(0).max()) for c in range(0, 520, step))
    assert widths[8] == -(-longest // 8) * 8 and widths[1] >= 3 * widths[8]
    k = tsc.SparseKernel.from_dense(w)
    assert [union_tf32.staged_row_words(c) for c in (3, 8, 64, 520)] == [4, 12, 68, 524]  # 4 mod 8
    for chunk in (64, 256, 520):
        row = union_tf32.staged_row_words(chunk)
        wl = layer.with_format(union.name, **union_tf32.chunked_format(k, chunk))
        program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
        (words,) = map(int, re.findall(r"__shared__ alignas\(\d+\) float x_tf32_shared_ptr\[(\d+)\]", program.source))
        assert wl.chunk == chunk and words % row == 0 and words * 4 <= 48 * 1024, (chunk, words)
        err = _error(EmulatedModule(program), [x, *algorithms.pack_weights(wl, k), bias], w, wl, bias)
        assert 1e-6 < err <= union.tolerance, chunk


@pytest.mark.parametrize("shape,kshape,strides,padding,dilations", [
    ((2, 20, 20, 40), (3, 3, 40, 16), 1, "SAME", 1),  # rows padded to 32 columns, 2 chunks
    ((1, 16, 40, 3), (5, 3, 3, 8), (1, 2), "SAME", (2, 1)),  # strided, dilated, 3 channels
    ((3, 7, 7, 40), (3, 3, 40, 16), 1, "SAME", 1),  # 7x7 maps: whole images, 3 of them
    ((2, 13, 13, 24), (3, 3, 24, 24), 2, "VALID", 1),  # strided to 6x6: whole images at pitch 7
    ((2, 14, 14, 40), (3, 3, 40, 16), 2, "SAME", 1),  # conv5 3x3 s2's map: 4 phase planes of 8 x 8
    ((1, 10, 10, 8), (3, 3, 8, 8), (1, 2), "SAME", (2, 1)),  # dilated rows: 2 planes of 14 x 6, 10 x 6 in 4 tiles
])
def test_union_tf32_stages_kxk_blocks_of_whole_rows(shape, kshape, strides, padding, dilations):
    """KxK layers: a block's rows (or whole images of narrow maps) stage as one box of the padded
    input, within 48 KB of shared memory, and the layer is right at TF32 accuracy."""
    w, k, bias, wl, x = _layer((shape, kshape, 0.3, strides, padding, dilations, True, "relu"), 7, "union-tf32")
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32")
    program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
    (words,) = map(int, re.findall(r"__shared__ alignas\(\d+\) float x_tf32_shared_ptr\[(\d+)\]", program.source))
    (gh, gw), (eh, ew), sw = wl.gather_hw, wl.kernel_extent, wl.strides[1]
    pitch = union_tf32.image_pitch(wl) if union_tf32.whole_images(wl) else None
    if pitch is not None:  # the grid's positions and the last one's window, phase planes of the strides
        (sh, sw), plane_rows = wl.strides, -(-gh // wl.strides[0])
        assert pitch == -(-gw // sw)
        farthest = max(((r % sh) * sw + c % sw) * plane_rows * pitch + r // sh * pitch + c // sw
                       for r in range(eh) for c in range(ew))
        positions = -(-wl.output_hw[0] * pitch // 16) * 16 + farthest
    else:
        if union_tf32.whole_images(wl):
            box_rows, columns = gh, gw
        else:
            rows, tiles = union_tf32.block_tiles(wl)
            box_rows, columns = (rows - 1) * wl.strides[0] + eh, (tiles * 16 - 1) * sw + ew
        positions = box_rows * sw * -(-columns // sw)  # strided columns by phase, each phase as wide
    assert words == positions * union_tf32.staged_row_words(wl.chunk) and words * 4 <= 48 * 1024
    err = _error(EmulatedModule(program), [x, *algorithms.pack_weights(wl, k), bias], w, wl, bias)
    assert 1e-6 < err <= algorithms.by_name("union-tf32").tolerance


@pytest.mark.parametrize("shape,kshape,strides", [
    ((32, 14, 14, 512), (1, 1, 512, 96), 1),  # 12 groups: blocks of 4, the taps' copy 3 rounds of 128 threads
    ((4, 12, 12, 40), (1, 1, 40, 24), 2),  # strided view, 40 channels in one chunk, 3 groups
])
def test_union_tf32_1x1_operands_a_chunk_ahead_compute_layers(shape, kshape, strides):
    """1x1 layers with each chunk's taps staged in shared memory beside its input and its B
    fragments loaded once a chunk (`untuned_chunk_operands`, each pair of unrolls): TF32 accuracy
    against float64 on a NaN-poisoned output."""
    w, k, bias, wl, x = _layer((shape, kshape, 0.15, strides, "SAME", 1, True, "relu"), 5, "union-tf32")
    ahead = [r for r in next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32").untuned_variants()
             if r.untuned_chunk_operands]
    assert len(ahead) == 4
    for rule in ahead:
        program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
        assert "__shared__ alignas(64) int taps_shared" in program.source, rule.untuned_label()
        err = _error(EmulatedModule(program), [x, *algorithms.pack_weights(wl, k), bias], w, wl, bias)
        assert 1e-6 < err <= algorithms.by_name("union-tf32").tolerance, rule.untuned_label()


@pytest.mark.parametrize("rule", ["cuda-union-tf32", "cuda-union-tf32-async"])
@pytest.mark.parametrize("shape,kshape,strides", [
    ((1, 7, 7, 64), (1, 1, 64, 32), 1),  # 49 pixels: 4 tiles, the last one 15 pixels of padding
    ((1, 14, 14, 96), (1, 1, 96, 48), 1),  # 196 pixels in 13 tiles (conv4 1x1 at batch 1)
    ((2, 13, 13, 40), (1, 1, 40, 24), 2),  # strided: 2 x 7 x 7 = 98 pixels, 3 groups
])
def test_union_tf32_1x1_layers_pad_their_pixels_to_whole_mma_tiles(rule, shape, kshape, strides):
    """1x1 layers whose N*OH*OW is no multiple of 16 (ResNet-50's conv4 and conv5 at batch 1):
    the last tile's padding pixels read zeros and are not stored; every real pixel is computed
    (TF32 accuracy against float64 on a NaN-poisoned output), untuned and on every untuned variant."""
    w, k, bias, wl, x = _layer((shape, kshape, 0.2, strides, "SAME", 1, True, "relu"), 3, rule.removeprefix("cuda-"))
    assert union_tf32.pointwise_pixels(wl) > int(np.prod(wl.output_shape[:3]))
    rule_obj = next(r for r in rules_for(TARGET) if r.name == rule)
    inputs = [x, *algorithms.pack_weights(wl, k), bias]
    for variant in rule_obj.untuned_variants():
        sch = variant.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
        if sch is None and getattr(variant, "reduction_slices", 1) > 1:
            continue
        err = _error(emulate(sch.mod, TARGET), inputs, w, wl, bias)
        assert 1e-6 < err <= algorithms.by_name(wl.algorithm).tolerance, (variant.untuned_label(), err)


@pytest.mark.parametrize("name,chunk", [("resnet50_conv5_3x3_b32_g8", None), ("resnet50_conv3_1x1_reduce_b32_g8", 256)])
def test_union_tf32_computes_block_pruned_resnet50_layers_at_batch_32(name, chunk):
    """Real layers of the block-pruned network (whole 7x7 images of 32 x 512 channels in 16
    chunks; a 1x1 layer in chunks of 256), as tests/test_gpu.py runs them on a device."""
    problem = workload_set(name)[0]
    w = problem.dense_kernel()
    k = tsc.SparseKernel.from_dense(w)
    wl = problem.workload(k, algorithm="union-tf32")
    if chunk:
        wl = wl.with_format("union-tf32", **union_tf32.chunked_format(k, chunk))
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32")
    x = np.random.default_rng(1).standard_normal(wl.input_shape).astype(np.float32)
    em = emulate(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
    err = _error(em, [x, *algorithms.pack_weights(wl, k)], w, wl, None)
    assert 1e-6 < err <= algorithms.by_name("union-tf32").tolerance


@pytest.mark.parametrize("algorithm", [a.name for a in algorithms.ALGORITHMS.values()
                                       if not a.generated and a.applies(None, "cuda")])
@pytest.mark.parametrize("case", FUZZ_CASES, ids=[f"fuzz{i}" for i in range(len(FUZZ_CASES))])
def test_sampled_design_space_candidates_compute_layers(algorithm, case):
    """Random draws from each CUDA design space (what tuning measures; tuning checks only its
    best few on a GPU, so no corner of a space may be wrong), 3 per design, fixed seeds (more and
    other draws: benchmarks/experiments/emulated_design_spaces.py)."""
    shape, kshape, density, strides, padding, dil = case
    rng = np.random.default_rng(10 * FUZZ_CASES.index(case) + len(algorithm))
    w = sparse_kernel(rng, kshape, density)
    k = tsc.SparseKernel.from_dense(w)
    wl = algorithms.workload_for(k, ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil), algorithm)
    if not algorithms.by_name(algorithm).applies(wl, "cuda"):
        pytest.skip(f"{algorithm} does not compute this layer")
    inputs = [rng.standard_normal(shape).astype(np.float32), *algorithms.pack_weights(wl, k)]
    ran = 0
    for sch in sampled_candidates(wl, TARGET, rng, seeds=3):
        err = _error(emulate(sch.mod, TARGET), inputs, w, wl, None)
        assert err <= algorithms.by_name(algorithm).tolerance, f"error {err:.2e}; decisions {list(sch.trace.decisions.values())}"
        ran += 1
    assert ran > 0, "every sampled candidate was rejected"


@pytest.mark.parametrize("algorithm,case", [
    ("union-tf32", ((1, 4, 4, 128), (1, 1, 128, 16), "VALID")),
    ("union-tf32-async", ((1, 4, 4, 128), (1, 1, 128, 16), "VALID")),
    ("union-tf32", ((1, 7, 7, 128), (3, 3, 128, 8), "SAME")),
    ("union-tf32", ((1, 10, 10, 128), (3, 3, 128, 8), "SAME"))], ids=["1x1", "1x1-async", "3x3-whole-image", "3x3-rows"])
def test_union_tuning_samples_split_reductions_that_compute_layers(algorithm, case):
    """Tuning searches a layer's split reductions as design spaces of their own
    (`CUDAUnionTF32.design_variants`: 2 and 4 shares where they divide the chunks, summed by a
    second kernel or in a cluster): a draw from each, against float64 on NaN-poisoned outputs (4 chunks of 32 channels). On KxK
    layers the sum is a thread a position of its own (whole images: of the staged pitch; rows:
    of columns padded to tiles), what MetaSchedule's reduction postprocessor takes: every draw of
    the sum under the epilogue's threads was rejected there."""
    shape, kshape, padding = case
    rng = np.random.default_rng(7)
    w = sparse_kernel(rng, kshape, 0.2)
    k = tsc.SparseKernel.from_dense(w)
    wl = algorithms.workload_for(k, ConvWorkload.create(shape, w.shape, k.ell_width, 1, padding, 1), algorithm)
    wl = wl.with_format(algorithm, **union_tf32.chunked_format(k, 32))
    assert kshape[0] == 1 or union_tf32.whole_images(wl) == (shape[2] == 7)  # (the staged-pitch sum, rows)
    inputs = [rng.standard_normal(wl.input_shape).astype(np.float32), *algorithms.pack_weights(wl, k)]
    drawn = []
    for sch in sampled_candidates(wl, TARGET, rng, seeds=1):
        err = _error(emulate(sch.mod, TARGET), inputs, w, wl, None)
        assert err <= algorithms.by_name(algorithm).tolerance, f"error {err:.2e}; {sch.trace}"
        (launch, *second) = lower(sch.mod, TARGET).launches
        drawn.append((_reduction_shares(sch) if launch.cluster[1] == 1 else launch.cluster[1], launch.cluster[1] > 1))
        assert len(second) == (drawn[-1] == (2, False) or drawn[-1] == (4, False))
        # what tune.py's summary reads off the record
        assert (reduction_shares(sch.trace), reduction_in_cluster(sch.trace)) == drawn[-1]
    assert sorted(drawn) == [(1, False), (2, False), (2, True), (4, False), (4, True)], f"shares of the draws: {drawn}"


def _reduction_shares(sch) -> int:
    """Shares a schedule splits its reduction into: the leading extent of `rfactor`'s partial
    sums (1 where it has none)."""
    partial = [b for b in sch.mod["main"].body.block.alloc_buffers if b.name.endswith(".rf")]
    return int(partial[0].shape[0]) if partial else 1


@pytest.mark.parametrize("folder,problem,workload,arch", RECORDS, ids=[f"{f}/{p}" for f, p, *_ in RECORDS])
def test_committed_cuda_records_compute_their_layers(folder, problem, workload, arch):
    """Each committed CUDA record, replayed onto its layer as compile() replays it, on fresh inputs."""
    target = targets.cuda_target_for_arch(arch)
    wl0 = ConvWorkload.from_json(workload)
    wl, w, arrays = problem_arguments(workload_set(problem)[0], seed=int(np.random.SeedSequence().entropy % 1000),
                                      algorithm=wl0.algorithm)
    tuned = tuning_records.find_tuned_schedule(wl, target, LOGS / folder)
    assert tuned is not None, f"{folder}/{problem}: no record applies"
    bias = arrays[-1] if wl.has_bias else None
    assert _error(emulate(tuned.schedule.mod, target), arrays, w, wl, bias) <= algorithms.by_name(wl.algorithm).tolerance


def _csr_layer(x_shape, k_shape, strides, padding, bias, activation, seed=17):
    rng = np.random.default_rng(seed)
    w = sparse_kernel(rng, k_shape, 0.2)
    b = rng.standard_normal(k_shape[3]).astype(np.float32) if bias else None
    kernel = tsc.SparseKernel.from_dense(w)
    wl = algorithms.workload_for(kernel, ConvWorkload.create(x_shape, kernel.shape, kernel.ell_width, strides,
                                                             padding, 1, has_bias=bias, activation=activation), CSR.name)
    return rng, w, b, kernel, wl


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,bias,activation,tile", CSR_SPLIT_K_CASES,
                         ids=[c[-1] + f"-{i}" for i, c in enumerate(CSR_SPLIT_K_CASES)])
@pytest.mark.parametrize("weights_in", CSR_WEIGHT_PATHS)
def test_csr_split_k_computes_1x1_layers(x_shape, k_shape, strides, padding, bias, activation, tile, weights_in,
                                         monkeypatch):
    """tests/test_gpu.py's csr-split-k grid, twice per build (the first kernel must reset the
    output every call; a cluster tile's blocks add up each other's sums in distributed shared memory)."""
    use_csr_weight_path(monkeypatch, weights_in)
    rng, w, b, kernel, wl = _csr_layer(x_shape, k_shape, strides, padding, bias, activation)
    em = emulate(CSR.ir_module(kernel, wl, CSR.tiles()[tile]), TARGET)
    weights = CSR.pack(wl, kernel) + ([b] if bias else [])
    for _ in range(2):
        x = rng.standard_normal(x_shape).astype(np.float32)
        assert _error(em, [x, *weights], w, wl, b) < 1e-5


def _csr_records() -> list[dict]:
    """The committed csr-split-k records (atomic and cluster tiles)."""
    return tile_records.read(tile_records.path_for(LOGS / "nvidia-h200", CSR.name), CSR.name)


@pytest.mark.parametrize("record", _csr_records(), ids=lambda r: f"{r['layer']}-{r['tile']}")
def test_committed_csr_split_k_records_compute_their_layers(record):
    from tvm_sparseconv.tile_tuning import generated_workload

    kernel, wl = generated_workload(workload_set(record["layer"])[0], CSR.name, "cuda")
    rng = np.random.default_rng()
    x = rng.standard_normal(wl.input_shape).astype(np.float32)
    bias = rng.standard_normal(wl.out_channels).astype(np.float32) if wl.has_bias else None
    em = emulate(CSR.ir_module(kernel, wl, CSR.tiles()[record["tile"]]), TARGET)
    inputs = [x, *CSR.pack(wl, kernel)] + ([bias] if bias is not None else [])
    assert _error(em, inputs, kernel.to_dense(), wl, bias) < 1e-5


# The emulator itself: it must be able to fail.

def _csr_program(tile: str = "p49q2r16k64t256", seed: int = 3):
    """A csr-split-k build of a 1x1 layer of 200 channels (4 chunks of 64), its inputs, kernel,
    workload and bias."""
    _, w, b, kernel, wl = _csr_layer((1, 7, 7, 200), (1, 1, 200, 72), 1, "SAME", True, "relu")
    program = lower(CSR.ir_module(kernel, wl, CSR.tiles()[tile]), TARGET)
    x = np.random.default_rng(seed).standard_normal(wl.input_shape).astype(np.float32)
    return program, [x, *CSR.pack(wl, kernel), b], w, wl, b


def _cluster_program():
    return _csr_program("p49q2r16k64t256C", seed=4)  # the 4 chunks as one cluster


def test_a_cluster_launch_runs_its_blocks_together():
    """One kernel, clusters of 4 blocks (the chunks of 200 channels); right, and wrong when the
    cluster barrier before the remote reads is removed (the other blocks' sums are not there yet)
    or when every block reads its own shared memory instead of its neighbours'."""
    program, inputs, w, wl, b = _cluster_program()
    (launch,) = program.launches
    assert launch.cluster == (1, 4, 1) and launch.grid[1] == 4
    assert _error(EmulatedModule(program), inputs, w, wl, b) < 1e-5
    out = np.full(wl.output_shape, np.nan, np.float32)
    no_barrier = dataclasses.replace(program, source=program.source.replace("tvm_builtin_cuda_cluster_sync();", "", 1))
    EmulatedModule(no_barrier)(*inputs, out)
    assert not np.all(np.isfinite(out))
    assert "((uint)rank)" in program.source
    own_rank = dataclasses.replace(program, source=program.source.replace("((uint)rank)", "((uint)blockIdx.y)", 1))
    out = np.full(wl.output_shape, np.nan, np.float32)
    EmulatedModule(own_rank)(*inputs, out)
    assert reference.relative_error(out, reference.conv2d_f64(inputs[0], w, wl, b)) > 1e-3


def test_a_remote_read_outside_the_cluster_faults():
    program, inputs, *_ = _cluster_program()
    broken = dataclasses.replace(program, source=program.source.replace("((uint)rank)", "((uint)rank + 4)", 1))
    out = np.full(program.buffers[-1].shape, np.nan, np.float32)
    with pytest.raises(EmulatedFault, match="ld.shared::cluster of rank [4-7]"):
        EmulatedModule(broken)(*inputs, out)


def test_a_kernel_without_its_barrier_computes_wrong_results():
    """Staging the input, then reading it without the barrier between: other threads' parts are
    still NaN (shared memory starts so) or stale."""
    program, inputs, w, wl, b = _csr_program()
    assert _error(EmulatedModule(program), inputs, w, wl, b) < 1e-5
    racy = dataclasses.replace(program, source=program.source.replace("__syncthreads();", "", 1))
    out = np.full(wl.output_shape, np.nan, np.float32)
    EmulatedModule(racy)(*inputs, out)
    assert not np.all(np.isfinite(out)) or reference.relative_error(out, reference.conv2d_f64(
        inputs[0], w, wl, b)) > 1e-3


def test_an_access_past_an_array_faults_and_names_the_launch():
    program, inputs, *_ = _csr_program()
    kernel = program.launches[1].kernel
    assert "x_in_ptr + (" in program.source
    broken = dataclasses.replace(program, source=program.source.replace("x_in_ptr + (", "x_in_ptr + 2000 + (", 1))
    out = np.full(program.buffers[-1].shape, np.nan, np.float32)
    with pytest.raises(EmulatedFault, match=f"fault in {kernel}: byte .* of x_nhwc"):
        EmulatedModule(broken)(*inputs, out)


def test_arguments_are_checked_and_read_only_outputs_refused():
    program, inputs, *_ = _csr_program()
    em = EmulatedModule(program)
    out = np.full(program.buffers[-1].shape, np.nan, np.float32)
    with pytest.raises(TypeError, match="expected 5 arrays"):
        em(*inputs)
    with pytest.raises(TypeError, match="argument x_nhwc: expected a float32 array of shape"):
        em(inputs[0].astype(np.float64), *inputs[1:], out)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        em(*inputs, out)


def _with_64_threads_on_49_pixels(rule_name: str = "cuda-ell-pixels"):
    """`rule_name`'s design space on a 7x7 output map with its first sampled choice (the threads
    over pixels) at 64 and its second (pixels per thread, or K slices) at 1: 15 threads past the
    map. Returns (that trace, the layer, inputs, kernel)."""
    from tvm_sparseconv.schedules import cuda_gather

    threads = {"cuda-ell-pixels": cuda_gather._PIXEL_THREADS, "cuda-ell-splitk": cuda_gather._SPLIT_K_THREADS}
    rule = next(r for r in rules_for(TARGET) if r.name == rule_name)
    w, k, bias, wl, x = _layer(((1, 14, 14, 32), (3, 3, 32, 40), 0.2, 2, "SAME", 1, False, None), 5, rule.algorithm)
    trace = rule.apply(tuning_records.workload_module(wl)["main"], TARGET, True).trace
    samples = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
    trace = trace.with_decision(samples[0], threads[rule_name].index(64), True)
    trace = trace.with_decision(samples[1], 0, True)  # 1 pixel per thread, or 1 slice of K
    tiles = next(i for i in trace.insts if i.kind.name == "SamplePerfectTile")
    trace = trace.with_decision(tiles, [40, 1, 1], True)  # one output channel per block
    return trace, wl, [x, *algorithms.pack_weights(wl, k)], w


@pytest.mark.parametrize("rule", ["cuda-ell-pixels", "cuda-ell-splitk"])
def test_threads_past_the_map_store_nothing(rule):
    """The rules make their register tiles' cache_writes before splitting the pixels, so the
    write-backs are predicated like the compute (made after, TVM sized them by the 64 threads'
    rows: stores past the output, which the GPU tests cannot see)."""
    trace, wl, inputs, w = _with_64_threads_on_49_pixels(rule)
    assert _error(emulate(replayed(trace, tuning_records.workload_module(wl)).mod, TARGET), inputs, w, wl, None) < 1e-5


def test_records_with_a_late_cache_write_replay_with_it_first():
    """A trace in the old order (cache_write after the loop splits, as records tuned before the fix
    have it) stores past the output; `with_cache_writes_first`, which the replay of CUDA records
    applies, puts it first and the same schedule is right."""
    from tvm_sparseconv.schedules.common import with_cache_writes_first

    trace, wl, inputs, w = _with_64_threads_on_49_pixels()
    late = with_late_cache_write(trace)
    mod = tuning_records.workload_module(wl)
    with pytest.raises(EmulatedFault, match="of conv, which holds 7840"):
        emulate(replayed(late, mod).mod, TARGET)(*inputs, np.full(wl.output_shape, np.nan, np.float32))
    fixed = with_cache_writes_first(late)
    assert fixed is not None and with_cache_writes_first(fixed) is None
    assert _error(emulate(replayed(fixed, mod).mod, TARGET), inputs, w, wl, None) < 1e-5


def _row_sums_by_warp_shuffles():
    """A row sum with its 64 terms over 32 threads: TVM lowers the cross-thread sum to warp shuffles."""
    import tvm
    from tvm import te

    a = te.placeholder((4, 64), name="a")
    k = te.reduce_axis((0, 64), name="k")
    b = te.compute((4,), lambda i: te.sum(a[i, k], axis=k), name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    i, kk = sch.get_loops(sch.get_sblock("b"))
    _, lanes = sch.split(kk, [None, 32])
    sch.bind(i, "blockIdx.x")
    sch.bind(lanes, "threadIdx.x")
    return lower(sch.mod, TARGET)


def test_warp_shuffles_add_up_across_lanes():
    program = _row_sums_by_warp_shuffles()
    shuffle = "__shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 1, 32)"
    assert shuffle in program.source
    a = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    sums = np.full(4, np.nan, np.float32)
    EmulatedModule(program)(a, sums)
    assert reference.relative_error(sums, a.astype(np.float64).sum(1)) < 1e-6
    wrong = dataclasses.replace(program, source=program.source.replace(shuffle, shuffle.replace(", 1, 32", ", 2, 32")))
    EmulatedModule(wrong)(a, sums)
    assert reference.relative_error(sums, a.astype(np.float64).sum(1)) > 1e-2


def test_union_tf32_async_copies_land_at_their_wait():
    """union-tf32-async stages each chunk with cp.async into a double-buffered tile, waiting for a
    chunk's copies one chunk later (the emulator lands a group of copies only at its wait): right
    at TF32 accuracy on a layer of two chunks; without the wait, the mma read tiles not yet landed."""
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32-async")
    w, k, bias, wl, x = _layer(((2, 20, 20, 40), (3, 3, 40, 32), 0.3, 1, "SAME", 1, True, "relu"), 0, rule.algorithm)
    assert -(-wl.input_shape[3] // wl.chunk) == 2
    program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
    inputs = [x, *algorithms.pack_weights(wl, k)] + ([bias] if bias is not None else [])
    assert re.search(r"cp\.async\.cg\.shared\.global \[%0\], \[%1\], %2", program.source)  # 16 bytes a copy
    err = _error(EmulatedModule(program), inputs, w, wl, bias)
    assert 1e-6 < err <= algorithms.by_name(wl.algorithm).tolerance
    wait = "tvm_builtin_ptx_cp_async_wait_group_async_wait_group_1();"
    assert program.source.count(wait) == 1
    early = dataclasses.replace(program, source=program.source.replace(wait, ""))
    out = np.full(wl.output_shape, np.nan, np.float32)
    EmulatedModule(early)(*inputs, out)
    assert not reference.relative_error(out, reference.conv2d_f64(x, w, wl, bias)) < 1e-2


def test_union_tf32_async_stages_strided_whole_images_in_narrower_chunks():
    """A stride-2 whole image (7x7 out of 14x14: 4 phase planes, 256 staged positions) takes 16
    channels a chunk in union-tf32-async (`union_tf32.layer_chunk`: at 32 its box would not fit half
    the shared memory), each chunk's cp.async copy landing in one of two tiles: right at TF32
    accuracy against float64 on a NaN-poisoned output, over 3 chunks."""
    rule = next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32-async")
    w, k, bias, wl, x = _layer(((2, 14, 14, 48), (3, 3, 48, 16), 0.3, 2, "SAME", 1, True, "relu"), 3, rule.algorithm)
    assert wl.chunk == union_tf32.CHUNK_WHOLE_IMAGE and union_tf32.image_pitch(wl) == 8
    assert union_tf32.whole_images(wl) and union_tf32.whole_image_positions(wl) == 256
    program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
    staged = int(re.search(r"__shared__ alignas\(\d+\) float x_tf32_shared_ptr\[(\d+)\]", program.source)[1])
    assert staged == 2 * 256 * union_tf32.staged_row_words(16)  # two tiles of a whole image
    err = _error(EmulatedModule(program), [x, *algorithms.pack_weights(wl, k), bias], w, wl, bias)
    assert 1e-6 < err <= algorithms.by_name(wl.algorithm).tolerance


@pytest.mark.parametrize("stages", [3, 4])
def test_union_tf32_async_deeper_pipelines_keep_more_chunks_in_flight(stages):
    """A 1x1 layer of 4 chunks with the async copy `stages` chunks deep: stages - 1 chunks' copies
    in flight (the wait lets the newest stages - 2 groups be pending), each tile within 1/stages
    of the shared memory, and right at TF32 accuracy."""
    rule = copy.copy(next(r for r in rules_for(TARGET) if r.name == "cuda-union-tf32-async"))
    rule.stages = stages
    w, k, bias, wl, x = _layer(((2, 8, 8, 256), (1, 1, 256, 32), 0.2, 1, "SAME", 1, False, None), 0, rule.algorithm)
    wl = wl.with_format(rule.algorithm, **union_tf32.chunked_format(k, 64))
    assert -(-wl.input_shape[3] // wl.chunk) == 4
    program = lower(rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False).mod, TARGET)
    assert f"tvm_builtin_ptx_cp_async_wait_group_async_wait_group_{stages - 2}();" in program.source
    staged = int(re.search(r"__shared__ alignas\(\d+\) float x_tf32_shared_ptr\[(\d+)\]", program.source)[1])
    assert staged * 4 <= union_tf32.SHARED_BYTES and staged % stages == 0
    err = _error(EmulatedModule(program), [x, *algorithms.pack_weights(wl, k)], w, wl, bias)
    assert 1e-6 < err <= algorithms.by_name(wl.algorithm).tolerance


@pytest.mark.parametrize("rule_name", ["cuda-union-tf32", "cuda-union-tf32-async"])
@pytest.mark.parametrize("case", [((2, 8, 8, 1024), (1, 1, 1024, 32), 0.1, 1, "SAME", 1, False, None),
                                  ((2, 14, 14, 128), (3, 3, 128, 16), 0.05, 1, "SAME", 1, False, None)],
                         ids=["1x1", "3x3"])
@pytest.mark.parametrize("k_unroll", [0, 512], ids=["k-loop", "k-unrolled"])
@pytest.mark.parametrize("chosen", [None, 0, 1], ids=["by-policy", "drawn-0", "drawn-1"])
def test_union_tf32_builds_skip_the_k_steps_past_each_union(rule_name, case, k_unroll, chosen):
    """A kernel's warps run the k steps of a chunk only while one of their groups' unions lasts, as
    the packed taps count them (`skip_padding_steps`): right at TF32 accuracy as packed (a count
    gathered as a tap, where a warp runs a step past a group's own, reads the pixel's own position
    with weight 0); told that each union of the chunks where all end early ends a step earlier
    still, the kernel drops those steps' taps (so it does read the counts). A KxK kernel whose k
    loop is unrolled runs all steps instead (its gather clamping the counts' position): the
    shortened counts change nothing there. A k loop annotated as tuning draws it
    (`SKIP_STEPS_ATTR`) skips or not as told."""
    rule = copy.copy(next(r for r in rules_for(TARGET) if r.name == rule_name))
    rule.untuned_k_unroll = k_unroll
    w, k, bias, wl, x = _layer(case, 1, rule.algorithm)
    sch = rule.apply(tuning_records.workload_module(wl)["main"], TARGET, False)
    if chosen is not None:
        k_loop = next(lp for lp in sch.get_loops(sch.get_sblock(union_tf32.A_TF32))
                      if sch.get(lp).loop_var.name == "k_0")
        sch.annotate(k_loop, SKIP_STEPS_ATTR, chosen)
    program = lower(sch.mod, TARGET)
    weights, taps = algorithms.pack_weights(wl, k)
    last = taps[..., -1]
    early = (last < -1).all(axis=0)  # chunks where every group's union ends a step or more before K
    assert early.any()
    err = _error(EmulatedModule(program), [x, weights, taps], w, wl, bias)
    assert 1e-6 < err <= algorithms.by_name(wl.algorithm).tolerance
    shorter = taps.copy()
    shorter[:, early, -1] += 1  # one step fewer each
    out = np.full(wl.output_shape, np.nan, np.float32)
    EmulatedModule(program)(x, weights, shorter, out)
    err = reference.relative_error(out, reference.conv2d_f64(x, w, wl, bias))
    skips = bool(chosen) if chosen is not None else not (k_unroll and not union_tf32.is_pointwise(wl.kernel_shape))
    if skips:
        assert not err < 1e-2
    else:
        assert err <= algorithms.by_name(wl.algorithm).tolerance
