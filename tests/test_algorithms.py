"""Every algorithm's definition (its TE compute and weight packing), unscheduled, against float64.

Schedules only reorder that computation, so a definition that is wrong here is wrong on every
target; this runs it as TVM lowers it without a schedule, on the CPU, for algorithms that are
scheduled only for CUDA too (their schedules are checked on the GPU, tests/test_gpu.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from tvm_sparseconv import algorithms
from tvm_sparseconv.algorithms import nhwc_direct, union_tf32
from tvm_sparseconv.tuning import problem_arguments
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import Problem

from conftest import grid_blocks, load_script, reference_conv, rel_err

# Small layers covering what the definitions special-case: 1x1 strided (nhwc-direct's strided view)
# with and without padding, KxK strided and dilated, channels that do not fill a chunk, batch > 1.
GRID = [
    Problem("1x1", (2, 6, 5, 12), (1, 1, 12, 8), 0.3),
    Problem("1x1_s2", (2, 9, 8, 12), (1, 1, 12, 8), 0.3, strides=2),
    Problem("1x1_s3x2_padded", (1, 7, 9, 5), (1, 1, 5, 6), 0.4, strides=(3, 2), padding=((1, 2), (2, 1))),
    Problem("3x3_s2", (2, 9, 7, 6), (3, 3, 6, 5), 0.3, strides=2, has_bias=True, activation="relu"),
    Problem("5x3_dilated", (1, 11, 10, 3), (5, 3, 3, 4), 0.4, padding="VALID", dilations=(2, 1)),
    # whole groups of 8 output channels and 16-pixel tiles (what union-tf32 computes)
    Problem("1x1_groups", (2, 4, 4, 12), (1, 1, 12, 16), 0.3),
    Problem("3x3_s2_groups", (1, 8, 8, 6), (3, 3, 6, 8), 0.3, strides=2, has_bias=True, activation="relu6"),
    Problem("5x3_dilated_groups", (1, 12, 10, 3), (5, 3, 3, 8), 0.4, padding="VALID", dilations=(2, 1)),
    Problem("1x1_chunks", (2, 4, 4, 150), (1, 1, 150, 16), 0.2, has_bias=True),  # 3 chunks, the last partial
    Problem("1x1_s2_padded_groups", (4, 7, 9, 70), (1, 1, 70, 16), 0.3, strides=2, padding=((1, 0), (0, 1))),
]


def _applies(algorithm: str, problem: Problem) -> bool:
    a = algorithms.by_name(algorithm)
    wl = problem.workload()
    return a.applies(wl, "llvm") or a.applies(wl, "cuda")


@pytest.mark.parametrize("algorithm", [n for n, a in algorithms.ALGORITHMS.items() if not a.generated])
@pytest.mark.parametrize("problem", GRID, ids=lambda p: p.name)
def test_unscheduled_definition_matches_float64(problem, algorithm, rng):
    if not _applies(algorithm, problem):
        pytest.skip(f"{algorithm} does not compute {problem.name}")
    wl, w, arrays = problem_arguments(problem, seed=int(rng.integers(1 << 30)), algorithm=algorithm)
    out = _run_unscheduled(wl, arrays)
    bias = arrays[-1] if wl.has_bias else None
    ref = reference_conv(arrays[0], w, wl.strides, problem.padding, wl.dilations, bias, wl.activation)
    assert rel_err(out, ref) <= algorithms.by_name(algorithm).tolerance


def _run_unscheduled(wl, arrays) -> np.ndarray:
    func = te.create_prim_func(algorithms.te_graph(wl))
    f = tvm.compile(tvm.IRModule({"main": func}), target="llvm")["main"]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32))
    f(*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


@pytest.mark.parametrize("problem", [p for p in GRID if _applies("union-tf32", p)], ids=lambda p: p.name)
def test_union_tf32_is_exact_on_tf32_rounded_operands(problem, rng):
    """union-tf32 rounds input and weights to TF32 (nearest) and sums in fp32: against float64 on the
    same rounded operands it is as exact as fp32 (the 2e-3 TF32 tolerance alone would miss a
    truncation or a wrong rounding of either operand)."""
    wl, w, arrays = problem_arguments(problem, seed=int(rng.integers(1 << 30)), algorithm="union-tf32")
    x = arrays[0]
    out = _run_unscheduled(wl, arrays)
    bias = arrays[-1] if wl.has_bias else None
    ref = reference_conv(union_tf32.round_tf32(x), union_tf32.round_tf32(w), wl.strides, problem.padding,
                         wl.dilations, bias, wl.activation)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(out, reference_conv(x, w, wl.strides, problem.padding, wl.dilations, bias, wl.activation)) > 1e-6


def test_round_tf32_is_round_to_nearest_ties_away():
    one_ulp = 2.0 ** -10  # TF32 keeps 10 mantissa bits
    x = np.array([1.0, 1.0 + one_ulp * 0.49, 1.0 + one_ulp * 0.5, -(1.0 + one_ulp * 0.5), 1.0 + one_ulp * 0.51,
                  3.0e-39, 65504.0 + 3.0], np.float32)
    r = union_tf32.round_tf32(x)
    assert list(r[:5]) == [1.0, 1.0, 1.0 + one_ulp, -(1.0 + one_ulp), 1.0 + one_ulp]
    assert (r.view(np.uint32) & 0x1FFF == 0).all()


def test_strided_1x1_stages_only_the_pixels_it_reads():
    """The strided view's stage is the output grid (not the strided bounding box), so its tiles and
    chunk are those of a stride-1 layer; stride-1 1x1 layers keep the definition their records key on."""
    s2 = Problem("s2", (1, 56, 56, 256), (1, 1, 256, 512), 0.1, strides=2).workload(algorithm="nhwc-direct")
    s1 = Problem("s1", (1, 28, 28, 256), (1, 1, 256, 512), 0.1).workload(algorithm="nhwc-direct")
    assert nhwc_direct.strided_view(s2) and not nhwc_direct.strided_view(s1)
    shapes = {t.op.name: tuple(int(d) for d in t.shape) for t in _all_tensors(algorithms.te_graph(s2)[-1])}
    assert shapes[nhwc_direct.X_PAD][:3] == (1, 28, 28)
    assert s2.chunk == s1.chunk
    assert nhwc_direct.ALGORITHM.func_attrs(s2) == nhwc_direct.ALGORITHM.func_attrs(s1)


def _all_tensors(out: te.Tensor) -> list[te.Tensor]:
    seen, stack = {}, [out]
    while stack:
        t = stack.pop()
        if t.op.name not in seen:
            seen[t.op.name] = t
            stack.extend(t.op.input_tensors)
    return list(seen.values())


def test_tf32_algorithms_only_serve_layers_compiled_for_tf32():
    """A TF32 record must never be picked behind the back of a user who asked for fp32 (the default)."""
    problem = GRID[-2]  # 1x1, whole groups and tiles
    kernel = problem.sparse_kernel()
    wl = problem.workload(kernel)
    fp32 = {w.algorithm for w in algorithms.workloads_for(kernel, wl, "cuda")}
    tf32 = {w.algorithm for w in algorithms.workloads_for(kernel, wl, "cuda", precision="tf32")}
    assert "union-tf32" not in fp32 and "union-tf32" in tf32 and fp32 < tf32
    with pytest.raises(ValueError, match="precision"):
        algorithms.workloads_for(kernel, wl, "cuda", precision="fp16")


def test_forcing_a_tf32_algorithm_needs_precision_tf32():
    import tvm_sparseconv as tsc
    from tvm_sparseconv import targets

    problem = GRID[-2]
    with pytest.raises(ValueError, match="precision='tf32'"):
        tsc.compile(problem.sparse_kernel(), problem.input_shape, target=targets.cuda_target_for_arch("sm_90"),
                    algorithm="union-tf32")


@pytest.mark.parametrize("kshape,chunk,strides,code,out_side", [
    # ResNet-50's 3x3 layers on a 16x16 map: one 16-pixel tile per row, a staged box 18 positions
    # wide of 32 channels padded to 36 words
    ((3, 3, 256, 256), 32, 1, ((0, 36, 72), 36 * 18), 16),
    # the stem: 3 channels in 4 words, 16 + 6 columns
    ((7, 7, 3, 64), 3, 1, (tuple(4 * kw for kw in range(7)), 4 * 22), 16),
    ((11, 11, 32, 64), 32, 1, (tuple(36 * kw for kw in range(11)), 36 * 26), 16),  # the headline's kernel
    ((1, 1, 200, 64), 200, 1, ((0,), 200), 16),  # 1x1: the tap is the channel
    # stride 2 on a 32x32 map: 33 input columns a 16-pixel tile, by phase (`column_phases`): 17
    # even positions then 17 odd, so kw 1 is the odd phase's first position, kw 2 the even's second
    ((3, 3, 64, 64), 32, 2, ((0, 36 * 17, 36), 2 * 36 * 17), 16),
    # the stem at stride 2: 37 columns, 19 a phase of 4 words
    ((7, 7, 3, 64), 3, 2, ((0, 76, 4, 80, 8, 84, 12), 2 * 76), 16),
    # a whole 7x7 image at stride 2 (conv5 3x3 s2's map, 14x14 in): 4 phase planes of 8 x 8
    # positions at pitch 8 (`image_plane`), kw 1 in the odd columns' plane, kh 1 the odd rows'
    ((3, 3, 64, 64), 32, 2, ((0, 36 * 64, 36), (0, 36 * 2 * 64, 36 * 8)), 7),
])
def test_union_tf32_packed_taps_rebuild_the_kernel(kshape, chunk, strides, code, out_side, rng):
    """Taps are coded as offsets in the staged input box (`tap_code`: an A element's shared address
    is its pixel's plus the tap; strided columns by phase), and the packed (taps, B-fragment
    weights) of every group and chunk rebuild the kernel, rounded to TF32; padding taps carry zero
    weights. Each union fills its own ceil(len / 8) k steps, which its last tap gives where steps
    are left after them (the build skips those, `skip_padding_steps`): they hold zero weights only."""
    import tvm_sparseconv as tsc
    from tvm_sparseconv.workload import ConvWorkload

    w = rng.standard_normal(kshape).astype(np.float32) * (rng.random(kshape) < 0.2)
    kernel = tsc.SparseKernel.from_dense(w)
    side = out_side * strides
    layer = ConvWorkload.create((1, side, side, kshape[2]), kshape, 1, strides, "SAME", 1, False, None)
    wl = layer.with_format(union_tf32.ALGORITHM.name, **union_tf32.chunked_format(kernel, chunk))
    offsets, per_kh = code  # (per kh: an offset per row, or each kh's)
    code = offsets, per_kh if isinstance(per_kh, tuple) else tuple(per_kh * kh for kh in range(kshape[0]))
    assert union_tf32.tap_code(wl) == code
    frags, taps = union_tf32.pack_union(wl, kernel)
    # each (kh, kw, ci in the chunk) its own offset, decoded here independently of the packing's
    where = {ci + offsets[kw] + code[1][kh]: (kh, kw, ci) for kh, kw, ci in np.ndindex(kshape[0], kshape[1], chunk)}
    assert len(where) == kshape[0] * kshape[1] * chunk
    # B fragment order back to [group, chunk, k, channel of the group] (schedules/mma_tf32.b_layout)
    g, c, ks = taps.shape
    weights = frags.reshape(g, c, ks // 8, 8, 4, 2).transpose(0, 1, 2, 5, 4, 3).reshape(g, c, ks, 8)
    rebuilt = np.zeros(kshape, np.float32)
    unions = union_tf32.group_unions(kernel, wl.chunk, code)
    for gi, ci_chunk in np.ndindex(g, c):
        steps = -(-len(unions[gi][ci_chunk]) // 8)
        last = taps[gi, ci_chunk, -1]
        assert (-last - 1 if last < 0 else ks // 8) == steps
        assert not weights[gi, ci_chunk, steps * 8:].any()
    for gi, ci_chunk, k in np.ndindex(g, c, ks):
        kh, kw, ci = where[max(int(taps[gi, ci_chunk, k]), 0)]  # clamped as the gather clamps it
        if ci + ci_chunk * wl.chunk < kshape[2]:
            rebuilt[kh, kw, ci + ci_chunk * wl.chunk, gi * 8:(gi + 1) * 8] += weights[gi, ci_chunk, k]
        else:
            assert not weights[gi, ci_chunk, k].any()
    np.testing.assert_array_equal(rebuilt, union_tf32.round_tf32(w))


def test_union_tf32_kxk_blocks_hold_an_even_number_of_tiles_where_one_fits():
    """A warp's mma tiles share its decoded taps, so a block's box has an even tile count where one
    fits: conv4 3x3 (14 rows of one 16-pixel tile) takes 2 rows, not 7."""
    from tvm_sparseconv.workloads import workload_set

    conv4 = workload_set("resnet50_conv4_3x3_b32_g8")[0].workload(algorithm="union-tf32")
    assert union_tf32.block_tiles(conv4) == (2, 1)
    conv2 = workload_set("resnet50_conv2_3x3_b32_g8")[0].workload(algorithm="union-tf32")
    rows, tiles = union_tf32.block_tiles(conv2)
    assert rows * tiles == union_tf32.MAX_BLOCK_TILES


@pytest.mark.parametrize("shape,kshape,strides,pitch,tiles,positions", [
    # conv5 3x3: 7 x 9 = 63 positions, 4 tiles as 49; staged: the grid's 64 and the last one's window
    ((32, 7, 7, 512), (3, 3, 512, 512), 1, 9, 4, 64 + 2 * 9 + 2),
    ((2, 6, 6, 16), (3, 3, 16, 8), 1, 8, 3, 48 + 2 * 8 + 2),  # 6 x 8 = 48: 3 tiles as 36
    ((2, 5, 5, 16), (5, 5, 16, 8), 1, None, 2, 9 * 9),  # 5 x 9 = 45 would take 3 tiles, 25 take 2: packed
    # conv5 3x3 s2: the 15 x 15 padded input in 4 phase planes of 8 x 8 (`image_plane`), 7 x 8 = 56
    # in 4 tiles; the last window's farthest tap (kh 1, kw 1) in the last plane, 3 planes on
    ((32, 14, 14, 512), (3, 3, 512, 512), 2, 8, 4, 4 * 64),
    # stride (1, 2): 12 rows x 11 columns in 2 planes of 12 x 6; 10 x 6 = 60 in 4 tiles as 50; kw 1
    # in the odd plane, 72 on: the last window reaches 2 rows and a plane on
    ((2, 10, 10, 16), (3, 3, 16, 8), (1, 2), 6, 4, 64 + 72 + 2 * 6),
])
def test_union_tf32_lays_whole_images_at_their_staged_pitch_where_that_costs_no_tile(shape, kshape, strides,
                                                                                     pitch, tiles, positions):
    """A whole-image layer lays its pixels at its staged input's pitch (the padded input's width;
    strided, its phase planes': an A element's address is then the lane's base plus immediate
    offsets) where that takes no more mma tiles; its staged box is the grid's positions plus the
    last one's window."""
    wl = ConvWorkload.create(shape, kshape, 8, strides, "SAME", 1).with_format("union-tf32", ell_width=8,
                                                                               chunk=min(32, kshape[2]))
    assert union_tf32.whole_images(wl)
    assert union_tf32.image_pitch(wl) == pitch
    assert union_tf32.pixel_grid(wl) == (1, tiles * union_tf32.M_TILE)
    assert union_tf32.whole_image_positions(wl) == positions


def test_union_tf32_whole_images_take_narrower_chunks_only_where_that_makes_them_fit():
    """conv5 3x3 s2's whole image (256 staged positions) fits union-tf32's one tile at 32
    channels a chunk, union-tf32-async's half-size tiles only at 16 (`layer_chunk`); every other
    ResNet-50 layer keeps its chunk width in both."""
    from tvm_sparseconv.workloads import workload_set

    for problem in workload_set("resnet50_network_s90_b32_g8"):
        for algorithm in ("union-tf32", "union-tf32-async"):
            wl = problem.workload(algorithm=algorithm)
            narrow = problem.name == "resnet50_conv5_3x3_s2_b32_g8" and algorithm == "union-tf32-async"
            assert wl.chunk == (union_tf32.CHUNK_WHOLE_IMAGE if narrow else union_tf32.chunk_size(wl.kernel_shape))
            if narrow:
                assert union_tf32.whole_images(wl)
                assert not union_tf32.whole_images(wl, union_tf32.CHUNK_KXK)


def test_union_tf32_async_double_buffers_its_tiles_within_the_shared_memory():
    """union-tf32-async keeps two staged tiles (one chunk's in flight): each KxK block's box of
    ResNet-50's block-pruned b32 layers fits in half of union-tf32's shared memory, so a block with
    both fits; on conv3 3x3 that means 4 rows of one column tile instead of 4 x 2, where union-tf32's
    single box of 4 x 2 takes more than half. (The 1x1 rule caps a block's pixels the same way.)"""
    from tvm_sparseconv.workloads import workload_set

    for problem in workload_set("resnet50_network_s90_b32_g8"):
        if union_tf32.is_pointwise(problem.kernel_shape):
            continue
        overlapped = problem.workload(algorithm="union-tf32-async")
        rows, tiles = union_tf32.block_tiles(overlapped)
        (eh, ew), (sh, sw) = overlapped.kernel_extent, overlapped.strides
        # a row's columns by phase (`column_phases`): the phases' positions in all
        columns = (tiles * union_tf32.M_TILE - 1) * sw + ew if not union_tf32.whole_images(overlapped) else (
            overlapped.gather_hw[1])
        box_rows = (rows - 1) * sh + eh if not union_tf32.whole_images(overlapped) else overlapped.gather_hw[0]
        box = box_rows * sw * -(-columns // sw)
        if union_tf32.whole_images(overlapped) and union_tf32.image_pitch(overlapped):  # the grid, the last window
            box = union_tf32.whole_image_positions(overlapped)
        assert 2 * box * union_tf32.staged_row_words(overlapped.chunk) * 4 <= union_tf32.SHARED_BYTES, problem.name
    conv3 = workload_set("resnet50_conv3_3x3_b32_g8")[0]
    assert union_tf32.block_tiles(conv3.workload(algorithm="union-tf32")) == (4, 2)
    assert union_tf32.block_tiles(conv3.workload(algorithm="union-tf32-async")) == (4, 1)


@pytest.mark.parametrize("layer,per_block", [
    # measured best of 16, 32, 64 untuned (H100, union_tf32_async_copy-v3-1x1-stages-groups-nvidia-h100.json)
    ("resnet50_conv5_1x1_expand_b32_g8", 32),
    ("resnet50_conv4_1x1_expand_b32_g8", 64),
    # 32 would leave 196 blocks: 16 (conv5 1x1 reduce's 64 groups leave 196 even at 16)
    ("resnet50_conv4_1x1_reduce_b32_g8", 16),
    ("resnet50_conv5_1x1_reduce_b32_g8", 16),
])
def test_union_tf32_untuned_1x1_blocks_hold_the_most_groups_that_keep_the_grid_full(layer, per_block):
    """Each block stages its pixels' input once for all its groups, so the untuned 1x1 template
    holds as many as leave `untuned_min_blocks` blocks (16 where none does); a `group_cap` set
    overrides it."""
    import copy
    import re

    from tvm_sparseconv import SparseKernel, targets, tuning_records
    from tvm_sparseconv.schedules import rule_by_name
    from tvm_sparseconv.workloads import workload_set

    (problem,) = workload_set(layer)
    kernel = SparseKernel.from_dense(problem.dense_kernel())
    wl = algorithms.workload_for(kernel, problem.workload(kernel), "union-tf32")
    tiles, groups = int(np.prod(wl.output_shape[:3])) // union_tf32.M_TILE, wl.kernel_shape[-1] // union_tf32.GROUP

    def held(cap=None) -> int:
        rule = copy.copy(rule_by_name("cuda-union-tf32"))  # the registered rule is shared
        if cap is not None:
            rule.group_cap = cap
        sch = rule.apply(tuning_records.workload_module(wl)["main"], targets.cuda_target_for_arch("sm_90"), False)
        (blocks,) = re.findall(r'T\.thread_binding\((\d+), thread="blockIdx\.x"\)', sch.mod.script())
        return groups * (tiles // 2) // int(blocks)  # 2 tiles a block: a chunk of 256 at 16 pixels fits twice in 48 KB

    assert held() == per_block
    assert held(cap=8) == 8


@pytest.mark.parametrize("rule_name", ["cuda-union-tf32", "cuda-union-tf32-async"])
def test_union_tf32_untuned_variants_try_kxk_blocks_of_half_the_groups(rule_name):
    """The untuned variants that tuning times include, for KxK layers, blocks of 8 groups (twice
    the blocks of the template's 16: the KxK layers slower than cuDNN TF32 ran under one wave);
    on a 1x1 layer that choice does not exist, and those variants schedule it as their twins do."""
    import tvm_ffi

    from tvm_sparseconv import SparseKernel, targets, tuning, tuning_records
    from tvm_sparseconv.schedules import rule_by_name
    from tvm_sparseconv.workloads import workload_set

    target = targets.cuda_target_for_arch("sm_90")
    variants = rule_by_name(rule_name).untuned_variants()
    ahead = 4 if rule_name == "cuda-union-tf32" else 0  # (union-tf32-async pipelines its copy alone)
    assert len(variants) == 36 + ahead and variants[0].untuned_label() == "untuned"
    halved = [v for v in variants if v.untuned_kxk_group_cap == 8]
    assert len(halved) == 14 and all("groups a KxK block 8" in v.untuned_label() for v in halved)

    def scheduled(layer, rule):
        (problem,) = workload_set(layer)
        kernel = SparseKernel.from_dense(problem.dense_kernel())
        wl = algorithms.workload_for(kernel, problem.workload(kernel), rule.algorithm)
        return rule.apply(tuning_records.workload_module(wl)["main"], target, False).mod

    assert grid_blocks(scheduled("resnet50_conv4_3x3_b32_g8", halved[0])) == 2 * grid_blocks(
        scheduled("resnet50_conv4_3x3_b32_g8", variants[0]))  # 448 -> 896
    assert tvm_ffi.structural_equal(scheduled("resnet50_conv4_1x1_reduce_b32_g8", halved[0]),
                                   scheduled("resnet50_conv4_1x1_reduce_b32_g8", variants[0]))
    # what tuning builds and times: 36 on the KxK layer (8 chunks: 2 and 4 shares, a second kernel
    # or a cluster; operands a chunk ahead are a 1x1 choice only), the 8 distinct unsplit ones (one
    # group a warp and tall blocks are KxK choices only), the 4 with operands a chunk ahead and the
    # 8 split ones on the 1x1 layer (4 chunks)
    for layer, distinct in (("resnet50_conv4_3x3_b32_g8", 36), ("resnet50_conv4_1x1_reduce_b32_g8", 16 + ahead)):
        (problem,) = workload_set(layer)
        kernel = SparseKernel.from_dense(problem.dense_kernel())
        wl = algorithms.workload_for(kernel, problem.workload(kernel), variants[0].algorithm)
        got = tuning.untuned_schedules([rule_by_name(rule_name)], tuning_records.workload_module(wl), target)
        assert len(got) == distinct, layer


#: shared-memory wavefronts of one A-fragment load (8 pixel rows x a quad of taps)
_wavefronts = load_script("benchmarks/experiments/union_bank_conflicts.py").wavefronts


@pytest.mark.parametrize("layer,most", [
    # sorted taps: 1.75 (ncu: 40% of its wavefronts excess). A union fills only its own steps,
    # the rest skipped, so less padding is left to fill quads (the bound was 1.1 when all K/8
    # steps ran)
    ("resnet50_conv4_3x3_b32_g8", 1.3),
    ("resnet50_conv2_3x3_b32_g8", 1.3),
    ("resnet50_conv3_1x1_reduce_b32", 1.15),
    ("resnet50_conv5_1x1_reduce_b32_g8", 1.3),
    # stride 2: 2.27 with the input's column order (pixels 72 words apart: 4 bank offsets for 8
    # pixels), 1.25 with the columns by phase (`column_phases`)
    ("resnet50_conv3_3x3_s2_b32_g8", 1.3),
    ("resnet50_conv5_3x3_s2_b32_g8", 1.3),
])
def test_union_tf32_fragment_loads_hit_distinct_banks(layer, most):
    """Packed taps are laid out so that an A-fragment load (8 pixels x an aligned quad of taps)
    of the steps that run takes about one shared-memory wavefront (`bank_spread`: a residue mod 4
    per tap of a quad, padding taps filling in), well under the sorted union's."""
    import tvm_sparseconv as tsc
    from tvm_sparseconv.workloads import workload_set

    (problem,) = workload_set(layer)
    kernel = tsc.SparseKernel.from_dense(problem.dense_kernel())
    wl = problem.workload(kernel, algorithm="union-tf32")
    position = union_tf32.staged_row_words(wl.chunk)  # consecutive pixels' positions, by phase where strided
    _, taps = union_tf32.pack_union(wl, kernel)
    unions = union_tf32.group_unions(kernel, wl.chunk, union_tf32.tap_code(wl))
    run = [[-(-len(u) // 8) * 8 for u in per_chunk] for per_chunk in unions]  # positions of the steps that run
    packed = np.mean([_wavefronts(taps[g, c, i:i + 4], position)
                      for g, c in np.ndindex(taps.shape[:2]) for i in range(0, run[g][c], 4)])
    in_order = np.mean([_wavefronts(np.pad(u, (0, wl.ell_width - len(u)))[i:i + 4], position)
                        for g, per_chunk in enumerate(unions) for c, u in enumerate(per_chunk)
                        for i in range(0, run[g][c], 4)])
    assert packed <= most < in_order, (packed, in_order)
