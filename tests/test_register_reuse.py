"""The experimental register-reuse kernel (pattern in the code) and its NVPTX build, without a GPU.

Checks what can be checked on the CPU: one FMA per nonzero with its weight as an immediate, no
local memory, a real `.entry` kernel that ptxas assembles, and TVM's CUDA module built around it.
Its results against float64 are checked on the GPU (tests/test_gpu.py).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tvm_sparseconv import algorithms
from tvm_sparseconv.nvptx_build import assemble, compile_nvptx, nvptx_ptx
from tvm_sparseconv.schedules.cuda_register_reuse import TILES, Tile, emit

from conftest import load_script

CASES = [  # (input NHWC, Cout, density, strides, pads, tile)
    ((2, 5, 7, 24), 20, 0.3, (1, 1), ((0, 0), (0, 0)), Tile(group=8, pixels=32, groups=2, stage=16, regs=8)),
    ((1, 9, 9, 6), 12, 0.5, (2, 2), ((0, 0), (0, 0)), Tile(group=4, pixels=32, groups=4, stage=8, regs=4)),  # Cin % 4 != 0
    # one branch per group; 3 groups in blocks of 2 (an idle group that must still meet the barriers)
    ((2, 5, 7, 24), 20, 0.3, (1, 1), ((0, 0), (0, 0)), Tile(group=8, pixels=32, groups=2, stage=16, regs=8, layout="groups")),
]


def _weights(cin: int, cout: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((cin, cout)) * (rng.random((cin, cout)) < density)).astype(np.float32)


def _out_hw(shape, strides):
    return tuple(-(-d // s) for d, s in zip(shape[1:3], strides))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_nonzero_is_one_fma_with_its_weight_in_the_code(case):
    shape, cout, density, strides, pads, tile = CASES[case]
    w = _weights(shape[3], cout, density, seed=case)
    ptx = nvptx_ptx(emit(w, shape, _out_hw(shape, strides), strides, pads, tile, bias=True, activation="relu"))
    assert ".visible .entry sparse_conv2d_kernel(" in ptx
    assert ".local" not in ptx, "sums or inputs spilled to local memory"
    # every branch meets the same barriers: 2 per stage, then 2 per group of a block (epilogue)
    stages = -(-shape[3] // tile.stage)
    per_path = 2 * stages + 2 * tile.groups
    n_groups = -(-cout // tile.group)
    branches = -(-n_groups // tile.groups) * tile.groups if tile.layout == "groups" else 1
    assert ptx.count("bar.sync") == (per_path - 2 * tile.groups) * branches + 2 * tile.groups
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    assert len(fmas) == np.count_nonzero(w)
    weights = sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas)
    np.testing.assert_array_equal(weights, np.sort(w[w != 0]))


@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_the_next_stage_loads_may_go_halfway_through_the_fmas(layout):
    """A tile with prefetch="middle": the same FMAs and barriers, and in each stage some FMAs come
    before the next stage's input loads (with "start" none do)."""
    shape, cout, density, strides, pads, _ = CASES[0]
    w = _weights(shape[3], cout, density)
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout=layout)

    def fmas_before_loads(prefetch):
        ptx = nvptx_ptx(emit(w, shape, _out_hw(shape, strides), strides, pads, replace(tile, prefetch=prefetch)))
        segments = ptx.split("bar.sync")
        counts = [seg.split("ld.b32")[0].count("fma.rn") if "ld.b32" in seg else None for seg in segments]
        return ptx, [c for c in counts if c is not None]

    start, early = fmas_before_loads("start")
    middle, late = fmas_before_loads("middle")
    assert start.count("fma.rn") == middle.count("fma.rn") == np.count_nonzero(w)
    assert start.count("bar.sync") == middle.count("bar.sync")
    assert early and not any(early[1:]), "start: a stage's loads come before its FMAs"
    assert any(late[1:]), "middle: some FMAs come before the next stage's loads"
    with pytest.raises(ValueError, match="prefetch"):
        emit(w, shape, _out_hw(shape, strides), strides, pads, replace(tile, prefetch="end"))
    assert TILES["g32p64x4GM"] == replace(TILES["g32p64x4G"], prefetch="middle")


@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_a_kxk_kernel_stages_each_tap_with_a_nonzero_and_has_one_fma_per_nonzero(layout):
    """3x3, stride 2, dilation 2, padded: one stage per (tap, channel range) holding a nonzero (a
    tap without any is skipped), one FMA per nonzero with its weight."""
    rng = np.random.default_rng(3)
    cin, cout = 12, 20
    w = (rng.standard_normal((3, 3, cin, cout)) * (rng.random((3, 3, cin, cout)) < 0.3)).astype(np.float32)
    w[1, 2] = 0.0  # a tap without nonzeros
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout=layout)
    ptx = nvptx_ptx(emit(w, (2, 9, 10, cin), (4, 4), (2, 2), ((2, 1), (1, 2)), tile, dilations=(2, 2)))
    stages = sum(1 for kh in range(3) for kw in range(3) for s0 in (0, 8) if np.any(w[kh, kw, s0:s0 + 8]))
    assert stages == 16
    branches = 4 if layout == "groups" else 1  # 3 groups in 2 blocks of 2: 4 branches (one idle)
    assert ptx.count("bar.sync") == 2 * stages * branches + 2 * tile.groups
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    np.testing.assert_array_equal(sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas), np.sort(w[w != 0]))


@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_a_halo_tile_stages_each_kernel_row_once_and_has_one_fma_per_nonzero(layout):
    """Halo tiles: one stage per (kernel row, channel range) holding a nonzero, whatever the number
    of taps in the row; still one FMA per nonzero with its weight, reading the staged row at the
    tap's offset."""
    rng = np.random.default_rng(5)
    cin, cout = 12, 20
    w = (rng.standard_normal((3, 5, cin, cout)) * (rng.random((3, 5, cin, cout)) < 0.3)).astype(np.float32)
    w[1] = 0.0  # a kernel row without nonzeros: no stage
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout=layout, halo=True)
    ptx = nvptx_ptx(emit(w, (2, 9, 40, cin), (4, 19), (2, 2), ((2, 1), (1, 2)), tile, dilations=(2, 2)))
    stages = sum(1 for kh in range(3) for s0 in (0, 8) if np.any(w[kh, :, s0:s0 + 8]))
    assert stages == 4
    branches = 4 if layout == "groups" else 1
    assert ptx.count("bar.sync") == 2 * stages * branches + 2 * tile.groups
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    np.testing.assert_array_equal(sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas), np.sort(w[w != 0]))
    assert ".local" not in ptx


@pytest.mark.parametrize("layout", ["steps", "groups"])
@pytest.mark.parametrize("rows, strides, dilations", [(2, (1, 1), (1, 1)), (3, (2, 2), (1, 1)), (2, (1, 1), (2, 2))])
def test_a_tile_of_several_rows_stages_each_input_row_once_and_has_rows_fmas_per_nonzero(layout, rows, strides,
                                                                                        dilations):
    """`Tile.rows`: one stage per (input row under the thread's rows, channel range) that some
    kernel row with a nonzero reads (stride 1: rows + KH - 1 of them instead of rows x KH), and
    each nonzero once per output row of the thread, its input loaded once for all of them."""
    from tvm_sparseconv.schedules.cuda_register_reuse import row_taps

    rng = np.random.default_rng(6)
    cin, cout = 12, 20
    w = (rng.standard_normal((3, 5, cin, cout)) * (rng.random((3, 5, cin, cout)) < 0.3)).astype(np.float32)
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout=layout, halo=True, rows=rows)
    out_hw = (5, 19)
    ptx = nvptx_ptx(emit(w, (2, 11, 40, cin), out_hw, strides, ((2, 1), (1, 2)), tile, dilations=dilations))
    offsets = {p * strides[0] + kh * dilations[0] for p in range(rows) for kh in range(3)}
    stages = sum(1 for d in offsets for s0 in (0, 8)
                 if any(np.any(w[kh, :, s0:s0 + 8]) for _, kh in row_taps(3, rows, strides[0], dilations[0], d)))
    per_output_row = rows * 3 * 2  # one stage per (output row, kernel row, channel range)
    assert stages < per_output_row if dilations[0] == 1 else stages == per_output_row
    branches = 4 if layout == "groups" else 1
    assert ptx.count("bar.sync") == 2 * stages * branches + 2 * tile.groups * rows
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    np.testing.assert_array_equal(sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas),
                                  np.sort(np.tile(w[w != 0], rows)))
    assert ".local" not in ptx


@pytest.mark.parametrize("fma_code", ["ptx", "tir"])
def test_a_block_looping_over_pixel_tiles_has_its_code_once_and_zeroes_its_sums_per_tile(fma_code):
    """`Tile.loops`: the pixel tiles are a loop around one copy of the code (one FMA per nonzero,
    not one per tile), the sums zeroed at each tile (PTX sums: a second zeroing beside the
    prologue's), no local memory; the grid is the tiles over `loops`."""
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((3, 3, 24, 40)) * (rng.random((3, 3, 24, 40)) < 0.3)).astype(np.float32)
    tile = Tile(group=8, pixels=32, groups=1, stage=8, regs=4, layout="groups", splits=3, loops=3)
    func = emit(w, (2, 9, 10, 24), (9, 10), (1, 1), ((1, 1), (1, 1)), tile, bias=True, activation="relu",
                fma_code=fma_code)
    ptx = nvptx_ptx(func)
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    np.testing.assert_array_equal(sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas), np.sort(w[w != 0]))
    assert ".local" not in ptx
    if fma_code == "ptx":
        assert len(re.findall(r"mov\.f32\s+%sa0, 0f00000000", ptx)) == 2
    host = str(emit(w, (2, 9, 10, 24), (9, 10), (1, 1), ((1, 1), (1, 1)), tile, bias=True, llvm=False))
    tiles = -(-2 * 9 * 10 // 32)  # 6 tiles of 32 pixels: 2 blocks of 3
    assert re.search(r'launch_thread\("blockIdx.x", 2\)', host)
    assert f"blockIdx_x * 3 + t < {tiles}" in host
    with pytest.raises(ValueError, match="loops"):
        Tile(loops=0).validate()


def test_tiles_of_several_rows_count_their_code_and_sums_against_the_budgets():
    """A `Tile.rows` tile's code holds each nonzero once per row (the code-size budget and the
    pieces count it so), its sums (group x rows) stay within `MAX_SUMS`, and only halo tiles
    without split-K take rows."""
    from tvm_sparseconv.algorithms import register_reuse
    from tvm_sparseconv.schedules.cuda_register_reuse import MAX_SUMS
    from tvm_sparseconv.workload import ConvWorkload

    algorithm = algorithms.by_name("register-reuse")
    headline = ConvWorkload.create((1, 256, 512, 32), (11, 11, 32, 64), 440, 1, "SAME", 1)
    assert algorithm.fits(headline, TILES["g32p128x2GHY2"])
    assert not algorithm.fits(headline, replace(TILES["g32p128x2GHY2"], rows=3)), "3 x 28,160: one piece over the limit"
    assert algorithm._pieces(24_781 * 2, headline, TILES["g32p128x2GHY2"]) == (1, False)
    assert register_reuse.MAX_JOINED_FMAS < 440 * 64 * 4
    assert algorithm._pieces(24_781 * 4, headline, TILES["g32p128x1GHY4"]) == (2, True), "linked: 4 x 28,160 possible"
    over = replace(TILES["g32p64x4GHY2"], rows=MAX_SUMS // 32 + 1)
    assert not algorithm.fits(ConvWorkload.create((1, 56, 56, 64), (3, 3, 64, 64), 20, 1, "SAME", 1), over)
    for bad in (dict(rows=2), dict(rows=2, halo=True, splits=2), dict(rows=0, halo=True)):
        with pytest.raises(ValueError, match="rows"):
            Tile(**bad).validate()


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas not on PATH")
def test_the_kernel_assembles_and_tvm_builds_a_cuda_module_around_it():
    shape, cout, density, strides, pads, tile = CASES[0]
    w = _weights(shape[3], cout, density)
    make = lambda llvm: emit(w, shape, _out_hw(shape, strides), strides, pads, tile, llvm=llvm)  # noqa: E731
    assert assemble(nvptx_ptx(make(True)))[:4] == b"\x7fELF"
    ex = compile_nvptx(make)
    kinds = [m.kind for m in ex.mod.imports]
    assert kinds == ["cuda"]


def test_a_tile_that_does_not_fit_its_rules_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        emit(_weights(8, 8, 0.5), (1, 4, 4, 8), (4, 4), (1, 1), ((0, 0), (0, 0)), Tile(stage=24, regs=16))


# --- as an algorithm of the library ---------------------------------------------------------------
def _layer(shape=(2, 5, 7, 24), cout=20, density=0.3):
    from tvm_sparseconv.kernel import SparseKernel
    from tvm_sparseconv.workload import ConvWorkload

    kernel = SparseKernel.from_dense(_weights(shape[3], cout, density)[None, None])
    wl = ConvWorkload.create(shape, kernel.shape, kernel.ell_width, 1, "SAME", 1, has_bias=True, activation="relu")
    return kernel, algorithms.workload_for(kernel, wl, "register-reuse")


def test_it_is_offered_for_cuda_1x1_layers_within_its_code_size_budget():
    kernel, wl = _layer()
    assert "register-reuse" not in [w.algorithm for w in algorithms.workloads_for(kernel, wl, "cuda")]
    # (and csr-split-k, the other tile-built CUDA algorithm for 1x1 layers)
    assert [w.algorithm for w in algorithms.generated_workloads_for(kernel, wl, "cuda")] == ["register-reuse",
                                                                                              "csr-split-k"]
    assert "register-reuse" not in [w.algorithm for w in algorithms.generated_workloads_for(kernel, wl, "llvm")]
    big = replace(wl, kernel_shape=(1, 1, 2048, 1024), ell_width=512)
    assert not algorithms.by_name("register-reuse").applies(big, "cuda"), "over the code-size budget"


def test_long_kxk_code_fits_only_with_the_steps_layout():
    """Above 160,000 possible FMAs a KxK kernel takes only tiles whose staging code is not repeated
    per channel group (the "steps" layout): compile time on 2 cores (conv5 3x3 b32: 42.9 s with
    g32p64x4s4G, 26.4 s with g32p64x4s4); 1x1 kernels of that size take either layout."""
    from tvm_sparseconv.algorithms.register_reuse import MAX_GROUPS_LAYOUT_KXK_FMAS
    from tvm_sparseconv.schedules.cuda_register_reuse import TILES

    algorithm = algorithms.by_name("register-reuse")
    _, wl = _layer()
    conv5_3x3 = replace(wl, input_shape=(32, 7, 7, 512), kernel_shape=(3, 3, 512, 512), ell_width=528,
                        pads=((1, 1), (1, 1)))
    assert 528 * 512 > MAX_GROUPS_LAYOUT_KXK_FMAS
    assert algorithm.fits(conv5_3x3, TILES["g32p64x4s4"])
    assert not algorithm.fits(conv5_3x3, TILES["g32p64x4s4G"])
    proj = replace(wl, input_shape=(32, 14, 14, 1024), kernel_shape=(1, 1, 1024, 2048), ell_width=132, strides=(2, 2))
    assert algorithm.fits(proj, TILES["g32p64x4G"])


def test_tiles_whose_pieces_would_be_too_long_do_not_fit():
    """Long code compiles in pieces of at most one channel block of the tile each: a tile with few
    channel blocks leaves pieces too long for the compile-time budget."""
    from tvm_sparseconv.algorithms.register_reuse import MAX_FMAS_PER_PIECE, MAX_UNROLLED_FMAS
    from tvm_sparseconv.schedules.cuda_register_reuse import TILES

    algorithm = algorithms.by_name("register-reuse")
    _, wl = _layer()
    one_block = replace(wl, kernel_shape=(1, 1, 1024, 256), ell_width=MAX_FMAS_PER_PIECE // 256 + 8)
    assert algorithm.applies(one_block, "cuda")
    assert not algorithm.fits(one_block, TILES["g32p32x8G"]), "256 channels: one block of 8 groups of 32, one piece"
    assert algorithm.fits(one_block, TILES["g16p32x2G"]), "8 blocks: 8 pieces"
    largest = replace(wl, kernel_shape=(1, 1, 2048, 1024), ell_width=MAX_UNROLLED_FMAS // 1024)
    assert algorithm.fits(largest, TILES["g32p64x4G"])


def test_tiles_over_the_static_shared_memory_do_not_fit():
    """A halo tile stages its pixels' input columns with the kernel's halo: 128 pixels of an 11x11
    kernel at stride 1 fit in 48 KB, at stride 2 (265 staged columns x 68 words) they do not."""
    from tvm_sparseconv.schedules.cuda_register_reuse import MAX_SHARED_BYTES, TILES, shared_bytes

    from tvm_sparseconv.workload import ConvWorkload

    algorithm = algorithms.by_name("register-reuse")
    wide = ConvWorkload.create((1, 256, 512, 32), (11, 11, 32, 64), 400, 1, "SAME")
    assert algorithm.fits(wide, TILES["g32p128x2GH"])
    strided = ConvWorkload.create((1, 256, 512, 32), (11, 11, 32, 64), 400, 2, "SAME")
    assert shared_bytes(256, (11, 11, 32, 64), (2, 2), (1, 1), TILES["g32p128x2GH"]) == 4 * 265 * 68 > MAX_SHARED_BYTES
    assert not algorithm.fits(strided, TILES["g32p128x2GH"])
    assert algorithm.fits(strided, TILES["g32p128x2G"]), "without the halo: 128 rows"


def test_a_record_whose_tile_does_not_fit_is_not_used(tmp_path):
    from tvm_sparseconv import build, targets, tile_records

    _, wl = _layer()
    wl = replace(wl, kernel_shape=(1, 1, 1024, 256), ell_width=300)
    target = targets.cuda_target_for_arch("sm_90")
    for tile, used in (("g32p32x8G", False), ("g16p32x2G", True)):
        tile_records.write(tile_records.path_for(tmp_path, "register-reuse"), "register-reuse", "test", "test",
                           [{"layer": "x", "shape": tile_records.shape_key(wl), "tile": tile, "seconds": 1e-5}])
        assert (build.generated_record(wl, target, tmp_path) is not None) == used, tile


def test_a_shape_holds_a_record_per_density_and_the_nearest_is_used(tmp_path):
    """The winning tile moves with the density (H200 conv4 3x3 b32: g32p128x2GHR80 at 90% zeros,
    g32p32x8GH at 95%): records of one shape at other densities are kept side by side."""
    from tvm_sparseconv import build, targets, tile_records

    _, wl = _layer()
    target = targets.cuda_target_for_arch("sm_90")
    shape = tile_records.shape_key(wl)

    def record(tile, nonzeros):
        return {"layer": "x", "shape": shape, "tile": tile, "seconds": 1e-5, "nonzeros": nonzeros}

    tile_records.merge(tmp_path, "register-reuse", "test", "a", [record("g32p64x4G", 1000)])
    tile_records.merge(tmp_path, "register-reuse", "test", "b", [record("g16p32x2G", 500)])
    assert {r["tile"] for r in tile_records.read(tile_records.path_for(tmp_path, "register-reuse"), "register-reuse")} \
        == {"g32p64x4G", "g16p32x2G"}
    assert build.generated_record(wl, target, tmp_path, 900).record["tile"] == "g32p64x4G"
    assert build.generated_record(wl, target, tmp_path, 520).record["tile"] == "g16p32x2G"
    assert build.generated_record(wl, target, tmp_path, 5000).record["tile"] == "g32p64x4G"
    tile_records.merge(tmp_path, "register-reuse", "test", "c", [record("g32p32x8G", 1100)])  # same density as 1000
    tiles = [r["tile"] for r in tile_records.read(tile_records.path_for(tmp_path, "register-reuse"), "register-reuse")]
    assert sorted(tiles) == ["g16p32x2G", "g32p32x8G"]


def test_a_record_run_keeps_an_unmeasured_faster_tile_only_if_measured_with_the_same_code(tmp_path):
    """`register_reuse.py --record`: an older record faster than the run's best, whose tile the run
    did not measure, is kept only where both were measured with the same emitter version; a record
    of older code (or of unknown code) is replaced (stop 30: conv5 1x1 reduce_first b32 kept a
    record of 70.4 us that ran 104.8 once the FMAs went in as PTX text)."""
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.workloads import workload_set

    experiment = load_script("benchmarks/experiments/register_reuse.py", "register_reuse_experiment")
    layer = "resnet50_conv3_1x1_reduce_b32"
    problem = workload_set(layer)[0]
    nnz = int(problem.sparse_kernel().nnz)
    shape = tile_records.shape_key(problem.workload())
    version = experiment.EMITTER_VERSION
    run = {"device": "test", "emitter_version": version, "layers": [{
        "layer": layer, "nnz": nnz, "cudnn_tf32": 3e-5,
        "library": {"algorithm": "nhwc-direct", "seconds": 1e-4, "relative_error": 1e-7},
        "tiles": {"g32p64x4G": {"seconds": 3e-5, "relative_error": 1e-7},
                  "g32p64x4GM": {"seconds": 2.5e-5, "relative_error": 1e-7}}}]}

    def recorded(old_version):
        path = tile_records.path_for(tmp_path, "register-reuse")
        path.unlink(missing_ok=True)
        old = {"layer": layer, "shape": shape, "tile": "g32p64x4", "seconds": 2e-5, "nonzeros": nnz}
        tile_records.merge(tmp_path, "register-reuse", "test", "old", [old | ({"emitter_version": old_version}
                                                                              if old_version else {})])
        experiment.write_records(run, tmp_path, "new")
        (record,) = tile_records.read(path, "register-reuse")
        return record["tile"], record.get("emitter_version")

    assert recorded(version) == ("g32p64x4", version), "same code: the faster unmeasured tile stays"
    assert recorded(version - 1) == ("g32p64x4GM", version), "older code: the run's best replaces it"
    assert recorded(None) == ("g32p64x4GM", version), "unknown code: the run's best replaces it"


def _network_layer_with_records(tmp_path, problem: str):
    """A copy of the H200 records without register-reuse ones; a layer of it (its kernel and
    workloads); the scheduled record's run_us."""
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.tuning_records import logs_root
    from tvm_sparseconv.workloads import workload_set

    folder = tmp_path / "nvidia-h200"
    shutil.copytree(logs_root() / "nvidia-h200", folder)
    tile_records.path_for(folder, "register-reuse").unlink()
    p = workload_set(problem)[0]
    kernel = p.sparse_kernel()
    wl = p.workload(kernel)
    return folder, kernel, algorithms.workloads_for(kernel, wl, "cuda"), algorithms.generated_workloads_for(kernel, wl, "cuda")


def test_compile_chooses_it_only_where_its_record_beats_the_scheduled_ones(tmp_path):
    """`choose_generated`: the tile record's time, scaled to the kernel's nonzeros, against the
    layer's best scheduled record of this device."""
    from tvm_sparseconv import build, targets, tile_records

    folder, kernel, scheduled, generated = _network_layer_with_records(tmp_path, "resnet50_conv2_1x1_reduce_first_b1")
    target = targets.cuda_target_for_arch("sm_90")
    assert build.choose_generated(kernel, scheduled, generated, target, folder) == (None, None), "no tile record"
    best_us = min(f[1] for f in build._tuned_records(scheduled, target, folder))

    def record(us: float, nonzeros: int):
        tile_records.write(tile_records.path_for(folder, "register-reuse"), "register-reuse", "test", "test",
                           [{"layer": "x", "shape": tile_records.shape_key(generated[0]), "tile": "g32p32x8",
                             "seconds": us * 1e-6, "nonzeros": nonzeros}])
        return build.choose_generated(kernel, scheduled, generated, target, folder)[0]

    assert record(best_us * 0.8, kernel.nnz) == generated[0]
    assert record(best_us * 1.2, kernel.nnz) is None
    # measured on a kernel with a quarter of the nonzeros: 4x slower here, so not chosen
    assert record(best_us * 0.8, kernel.nnz // 4) is None
    # a record measured on a denser kernel is not credited for this sparser one
    assert record(best_us * 1.1, kernel.nnz * 4) is None and record(best_us * 0.9, kernel.nnz * 4) == generated[0]


def test_a_tie_goes_to_the_record_of_short_code(tmp_path):
    """Within `build.TIE_MARGIN`, csr-split-k (weights as data) or a scheduled algorithm wins over
    register-reuse (code per nonzero, up to ~35 s of compile time per layer)."""
    from tvm_sparseconv import build, targets, tile_records

    folder, kernel, scheduled, generated = _network_layer_with_records(tmp_path, "resnet50_conv5_1x1_reduce_first_b1")
    tile_records.path_for(folder, "csr-split-k").unlink(missing_ok=True)
    target = targets.cuda_target_for_arch("sm_90")
    best_us = min(f[1] for f in build._tuned_records(scheduled, target, folder))
    by_name = {g.algorithm: g for g in generated}

    def records(rr_us: float, csr_us: float | None = None):
        for alg, tile, us in (("register-reuse", "g32p64x1s4G", rr_us), ("csr-split-k", "p32q2r64k128t256", csr_us)):
            path = tile_records.path_for(folder, alg)
            path.unlink(missing_ok=True)
            if us is not None:
                tile_records.write(path, alg, "test", "test", [{"layer": "x", "shape": tile_records.shape_key(by_name[alg]),
                                                                "tile": tile, "seconds": us * 1e-6, "nonzeros": kernel.nnz}])
        chosen = build.choose_generated(kernel, scheduled, generated, target, folder)[0]
        return chosen.algorithm if chosen is not None else None

    assert records(best_us * 0.8) == "register-reuse"
    assert records(best_us * (1 - build.TIE_MARGIN / 2)) is None, "ties the scheduled record: short code wins"
    assert records(best_us * 0.8, best_us * 0.8 * (1 + build.TIE_MARGIN / 2)) == "csr-split-k"
    assert records(best_us * 0.8, best_us * 0.8 * (1 + 2 * build.TIE_MARGIN)) == "register-reuse"
    assert records(best_us * 0.9, best_us * 0.8) == "csr-split-k"
    # csr-split-k's own ties with a scheduled record are decided by time alone
    assert records(best_us * 2, best_us * (1 - build.TIE_MARGIN / 2)) == "csr-split-k"


def test_compile_builds_the_generated_kernel_it_chose(tmp_path):
    from tvm_sparseconv import build, targets, tile_records

    folder, kernel, scheduled, generated = _network_layer_with_records(tmp_path, "resnet50_conv2_1x1_reduce_first_b1")
    tile_records.write(tile_records.path_for(folder, "register-reuse"), "register-reuse", "test", "test",
                       [{"layer": "x", "shape": tile_records.shape_key(generated[0]), "tile": "g16p32x2",
                         "seconds": 1e-7, "nonzeros": kernel.nnz}])
    res = build.build_layer(kernel, scheduled, generated, targets.cuda_target_for_arch("sm_90"), False, folder)
    assert res.workload.algorithm == "register-reuse"
    assert res.schedule_source == "tuned:register-reuse g16p32x2@nvidia-h200"
    assert [m.kind for m in res.module.imports] == ["cuda"]


def test_build_takes_the_tile_of_its_record_else_the_default(tmp_path):
    from tvm_sparseconv import build, targets, tile_records

    kernel, wl = _layer()
    target = targets.cuda_target_for_arch("sm_90")
    untuned = build.build_generated(kernel, wl, target, folder=tmp_path, use_disk_cache=False)
    assert untuned.schedule_source == "untuned:register-reuse g32p32x8" and not untuned.tuned
    tile_records.write(tile_records.path_for(tmp_path, "register-reuse"), "register-reuse", "test", "test",
                       [{"layer": "x", "shape": tile_records.shape_key(wl), "tile": "g16p32x2", "seconds": 1e-5}])
    tuned = build.build_generated(kernel, wl, target, folder=tmp_path, use_disk_cache=False)
    assert tuned.schedule_source == f"tuned:register-reuse g16p32x2@{tmp_path.name}" and tuned.tuned
    assert [m.kind for m in tuned.module.imports] == ["cuda"]


def test_a_damaged_record_file_warns_and_the_default_tile_is_used(tmp_path):
    from tvm_sparseconv import build, targets
    from tvm_sparseconv.tuning_records import TuningLogWarning

    kernel, wl = _layer()
    (tmp_path / "register_reuse.json").write_text('{"version": 1, "algorithm": "register-reuse", "records": [{"tile"')
    with pytest.warns(TuningLogWarning, match="register_reuse.json"):
        res = build.build_generated(kernel, wl, targets.cuda_target_for_arch("sm_90"), folder=tmp_path,
                                    use_disk_cache=False)
    assert res.schedule_source.startswith("untuned:register-reuse")


def test_the_committed_records_name_known_tiles_and_real_layers():
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.schedules.cuda_register_reuse import TILES
    from tvm_sparseconv.tuning_records import logs_root
    from tvm_sparseconv.workloads import workload_set

    path = tile_records.path_for(logs_root() / "nvidia-h200", "register-reuse")
    records = tile_records.read(path, "register-reuse")
    assert len(records) >= 10
    for r in records:
        assert r["tile"] in TILES
        assert r["shape"] == tile_records.shape_key(workload_set(r["layer"])[0].workload())
    for i, a in enumerate(records):  # one record per shape and density
        assert not any(a["shape"] == b["shape"] and tile_records.same_density(a, b["nonzeros"]) for b in records[i + 1:])


def _committed_cluster_records() -> list[dict]:
    from tvm_sparseconv import tile_records
    from tvm_sparseconv.tuning_records import logs_root

    path = tile_records.path_for(logs_root() / "nvidia-h200", "register-reuse")
    return [r for r in tile_records.read(path, "register-reuse") if TILES[r["tile"]].reduce == "cluster"]


@pytest.mark.skipif(not shutil.which("ptxas"), reason="needs ptxas")
@pytest.mark.parametrize("record", _committed_cluster_records(), ids=lambda r: f"{r['layer']}-{r['tile']}")
def test_the_committed_cluster_records_build_for_sm_90_as_compile_builds_them(record, monkeypatch):
    """Each committed record of a cluster tile, built for its real layer as `compile()` builds it
    (pieces, ptxas for sm_90, TVM's module around the cubin): one kernel launched in clusters of
    its split-K shares."""
    from tvm_sparseconv import nvptx_build
    from tvm_sparseconv.schedules.cuda_register_reuse import split_count
    from tvm_sparseconv.tile_tuning import generated_workload
    from tvm_sparseconv.workloads import workload_set

    kernel, wl = generated_workload(workload_set(record["layer"])[0], "register-reuse", "cuda")
    tile = TILES[record["tile"]]
    sources, real = [], nvptx_build.assemble
    monkeypatch.setattr(nvptx_build, "assemble", lambda ptx, *a, **k: sources.append(ptx) or real(ptx, *a, **k))
    ex = algorithms.by_name("register-reuse").build(kernel, wl, tile)
    assert [m.kind for m in ex.mod.imports] == ["cuda"]
    shares = split_count(np.asarray(kernel.to_dense(), np.float32), tile)
    assert 2 <= shares <= tile.splits
    assert re.findall(r"\.entry (\w+)\(", sources[-1]) == ["sparse_conv2d_kernel"]
    assert f".reqnctapercluster 1, 1, {shares}" in sources[-1]


@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_long_code_is_split_into_kernels_launched_in_turn(layout):
    """parts=3 over 4 channel blocks: three kernels, every nonzero once, one host function."""
    w = _weights(24, 64, 0.3, seed=5)
    tile = Tile(group=8, pixels=32, groups=2, stage=16, regs=8, layout=layout)
    make = lambda llvm: emit(w, (2, 5, 7, 24), (5, 7), (1, 1), ((0, 0), (0, 0)), tile, llvm=llvm, parts=3)  # noqa: E731
    ptx = nvptx_ptx(make(True))
    assert sorted(re.findall(r"\.entry (sparse_conv2d_kernel\w*)\(", ptx)) == [
        "sparse_conv2d_kernel", "sparse_conv2d_kernel_1", "sparse_conv2d_kernel_2"]
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    if shutil.which("ptxas"):
        ex = compile_nvptx(make)
        assert [m.kind for m in ex.mod.imports] == ["cuda"]


@pytest.mark.parametrize("layout", ["steps", "groups"])
def test_split_k_shares_the_stages_over_blocks_and_adds_a_reducing_kernel(layout):
    """splits=3 on a 3x3 kernel: each stage in one share (every nonzero one FMA), each share's
    branch meets the barriers of its own stages only, then one more kernel sums the shares."""
    from tvm_sparseconv.schedules.cuda_register_reuse import _shares

    rng = np.random.default_rng(8)
    cin, cout = 16, 24
    w = (rng.standard_normal((3, 3, cin, cout)) * (rng.random((3, 3, cin, cout)) < 0.3)).astype(np.float32)
    tile = Tile(group=8, pixels=32, groups=3, stage=8, regs=4, layout=layout, splits=3)
    make = lambda llvm: emit(w, (1, 6, 7, cin), (6, 7), (1, 1), ((1, 1), (1, 1)), tile, bias=True,  # noqa: E731
                             activation="relu", llvm=llvm)
    ptx = nvptx_ptx(make(True))
    assert sorted(re.findall(r"\.entry (sparse_conv2d_kernel\w*)\(", ptx)) == ["sparse_conv2d_kernel",
                                                                              "sparse_conv2d_kernel_1"]
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    branches = 3 if layout == "groups" else 1
    assert ptx.count("bar.sync") == 2 * 18 * branches + 2 * tile.groups  # 18 stages in 3 shares
    if shutil.which("ptxas"):
        assert [m.kind for m in compile_nvptx(make).mod.imports] == ["cuda"]


@pytest.mark.parametrize("halo", [False, True])
def test_a_cluster_reduction_adds_up_the_shares_in_one_kernel_launched_as_clusters(halo):
    """`Tile.reduce` "cluster": one kernel (no workspace, no reducing kernel) launched in clusters
    of the split-K shares (a compile-time cluster shape), two cluster barriers per group of the
    block around the reads of every block's shared memory, each in rank order; every nonzero one
    FMA; ptxas assembles it for sm_90."""
    rng = np.random.default_rng(8)
    cin, cout = 16, 40
    w = (rng.standard_normal((3, 3, cin, cout)) * (rng.random((3, 3, cin, cout)) < 0.3)).astype(np.float32)
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout="groups", splits=3, halo=halo, reduce="cluster")
    make = lambda llvm: emit(w, (2, 6, 7, cin), (6, 7), (1, 1), ((1, 1), (1, 1)), tile, bias=True,  # noqa: E731
                             activation="relu", llvm=llvm)
    ptx = nvptx_ptx(make(True))
    assert re.findall(r"\.entry (\w+)\(", ptx) == ["sparse_conv2d_kernel"]
    assert re.search(r"\)\n\.reqnctapercluster 1, 1, 3\n\{", ptx)
    assert ptx.count("barrier.cluster.arrive") == ptx.count("barrier.cluster.wait") == 2 * tile.groups
    ranks = [int(r) for r in re.findall(r"mapa\.shared::cluster\.u64\s+%cq1, %cq0, (\d+);", ptx)]
    assert ranks == [0, 1, 2] * (len(ranks) // 3) and ranks
    host = make(False)
    assert [str(p.name) for p in host.params] == ["x", "bias", "out"]  # no workspace
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    if shutil.which("ptxas"):
        assert [m.kind for m in compile_nvptx(make).mod.imports] == ["cuda"]


def test_a_cluster_reduction_is_validated():
    """Clusters of 2 to 8 blocks (the portable size), not with blocks looping over pixel tiles,
    and only with the FMAs as PTX (the reduction is PTX text)."""
    from tvm_sparseconv.schedules.cuda_register_reuse import MAX_CLUSTER

    for bad in (dict(splits=1), dict(splits=MAX_CLUSTER + 1), dict(splits=4, loops=2)):
        with pytest.raises(ValueError, match="cluster"):
            Tile(reduce="cluster", **bad).validate()
    with pytest.raises(ValueError, match="reduce"):
        Tile(splits=2, reduce="atomics").validate()
    w = np.eye(16, dtype=np.float32)
    with pytest.raises(ValueError, match="fma_code='ptx'"):
        emit(w, (1, 4, 4, 16), (4, 4), (1, 1), ((0, 0), (0, 0)), Tile(group=8, pixels=32, groups=2, stage=8, regs=4,
             splits=2, reduce="cluster"), fma_code="tir")


@pytest.mark.skipif(not shutil.which("ptxas"), reason="needs ptxas")
@pytest.mark.parametrize("apart", [False, True], ids=["joined", "linked"])
def test_pieces_of_a_cluster_kernel_keep_its_shares_together_and_the_dispatcher_its_cluster_shape(apart, monkeypatch):
    """Long code of a cluster tile in pieces: never cut between the shares of a channel block
    (every block of a cluster must run the piece that holds its barriers); the pieces become
    device functions without the cluster directive, the dispatching kernel carries it."""
    from tvm_sparseconv import algorithms as algs, nvptx_build
    from tvm_sparseconv.algorithms import register_reuse
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    assert rr.piece_plan(n_blocks=2, splits=4, n_pieces=8, cut_shares=False) == [(0, 1, 0, 4), (1, 2, 0, 4)]
    kernel, wl = _layer(shape=(2, 5, 7, 24), cout=48, density=0.3)
    tile = Tile(group=8, pixels=32, groups=1, stage=8, regs=4, layout="groups", splits=3, reduce="cluster")
    monkeypatch.setattr(rr, "FMAS_PER_PIECE", -(-kernel.nnz // 3))
    monkeypatch.setattr(rr, "FMAS_PER_LINKED_PIECE", -(-kernel.nnz // 3))
    if apart:
        monkeypatch.setattr(register_reuse, "MAX_JOINED_FMAS", 0)
    assert rr.pieces_for(kernel.nnz, 48, tile) == 3
    sources = []
    real = nvptx_build.assemble
    monkeypatch.setattr(nvptx_build, "assemble", lambda ptx, *a, **k: sources.append(ptx) or real(ptx, *a, **k))
    monkeypatch.setattr(nvptx_build, "build_with_cubin", lambda host, cubin, arch="sm_90": cubin)
    if apart:
        monkeypatch.setattr(nvptx_build, "link", lambda objects, arch="sm_90": b"linked")
    algs.by_name("register-reuse").build(kernel, wl, tile)
    dispatcher = sources[-1]  # joined: the whole module; linked: the dispatcher (pieces assembled in children)
    assert re.findall(r"\.entry (\w+)\(", dispatcher) == ["sparse_conv2d_kernel"]  # no reducing kernel
    assert re.search(r"\)\n\.reqnctapercluster 1, 1, 3\n\{", dispatcher)
    assert dispatcher.count(".reqnctapercluster") == 1
    assert dispatcher.count("barrier.cluster.wait") == (0 if apart else 2 * 3)  # one group per piece's blocks


@pytest.mark.parametrize("splits", [1, 3])
def test_long_code_compiled_in_pieces_is_joined_into_one_kernel(splits, monkeypatch):
    """Pieces (here 3, of 2 channel blocks each; compiled in 2 child processes) become device
    functions that one kernel calls in turn; every nonzero is one FMA once; with split-K the tail
    kernel follows as the second kernel; ptxas assembles it and TVM builds the module around it."""
    from tvm_sparseconv import algorithms as algs, nvptx_build
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    kernel, wl = _layer(shape=(2, 5, 7, 24), cout=48, density=0.3)
    tile = Tile(group=8, pixels=32, groups=1, stage=8, regs=4, layout="groups", splits=splits)
    monkeypatch.setattr(rr, "FMAS_PER_PIECE", -(-kernel.nnz // 3))
    assert rr.pieces_for(kernel.nnz, 48, tile) == 3
    joined = []
    monkeypatch.setattr(nvptx_build, "assemble", lambda ptx, arch="sm_90", threads=1, **ptxas: joined.append(ptx) or b"")
    monkeypatch.setattr(nvptx_build, "build_with_cubin", lambda host, cubin, arch="sm_90": host)
    host = algs.by_name("register-reuse").build(kernel, wl, tile)
    ptx = joined[0]
    kernels = ["sparse_conv2d_kernel"] + (["sparse_conv2d_kernel_1"] if splits > 1 else [])
    assert re.findall(r"\.entry (\w+)\(", ptx) == kernels
    assert re.findall(r"\.func (sparse_conv2d\w*)\(", ptx) == [f"sparse_conv2d_kernel_piece{i}" for i in range(3)]
    assert ptx.count("call.uni sparse_conv2d_kernel_piece") == 3
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", ptx)
    w = kernel.to_dense()
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    assert str(host.attrs["global_symbol"]) == "sparse_conv2d"
    if shutil.which("ptxas"):
        assert assemble(ptx)[:4] == b"\x7fELF"


def test_pieces_cut_split_k_shares_where_channel_blocks_are_too_few():
    """More pieces than channel blocks: a split-K tile's shares are cut too, every (block, share)
    in exactly one piece; without split-K, at most one piece per channel block."""
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    plan = rr.piece_plan(n_blocks=2, splits=4, n_pieces=8)
    assert plan == [(0, 1, 0, 1), (0, 1, 1, 2), (0, 1, 2, 3), (0, 1, 3, 4), (1, 2, 0, 1), (1, 2, 1, 2), (1, 2, 2, 3), (1, 2, 3, 4)]
    assert rr.piece_plan(n_blocks=2, splits=4, n_pieces=4) == [(0, 1, 0, 2), (0, 1, 2, 4), (1, 2, 0, 2), (1, 2, 2, 4)]
    assert rr.piece_plan(n_blocks=3, splits=4, n_pieces=2) == [(0, 2, 0, 4), (2, 3, 0, 4)]
    assert rr.piece_plan(n_blocks=2, splits=1, n_pieces=8) == [(0, 1, 0, 1), (1, 2, 0, 1)]
    kernel, wl = _layer(shape=(2, 5, 7, 24), cout=16, density=0.5)
    tile = Tile(group=8, pixels=32, groups=2, stage=8, regs=4, layout="groups", splits=3)
    w = kernel.to_dense()
    assert rr.pieces_for(kernel.nnz, 16, tile, per_piece=-(-kernel.nnz // 3), splits=rr.split_count(w, tile)) == 3
    ptx = [nvptx_ptx(algorithms.by_name("register-reuse").recipe(kernel, wl, tile, piece=("part", i, 3))())
           for i in range(3)]
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", "".join(ptx))
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    with pytest.raises(ValueError, match="pieces asked"):
        algorithms.by_name("register-reuse").recipe(kernel, wl, tile, piece=("part", 0, 5))()


@pytest.mark.skipif(not (shutil.which("ptxas") and shutil.which("nvlink")), reason="needs ptxas and nvlink")
@pytest.mark.parametrize("splits", [1, 3])
def test_long_code_compiled_in_pieces_is_linked_into_one_kernel(splits, monkeypatch):
    """Pieces (here 3, of 2 channel blocks each; compiled in 2 child processes) become device
    functions of their own objects that one kernel calls in turn; every nonzero is one FMA once;
    with split-K the tail kernel follows as the second kernel; nvlink links them into a cubin and
    TVM builds the module around it."""
    from tvm_sparseconv import algorithms as algs, nvptx_build
    from tvm_sparseconv.schedules import cuda_register_reuse as rr

    from tvm_sparseconv.algorithms import register_reuse

    kernel, wl = _layer(shape=(2, 5, 7, 24), cout=48, density=0.3)
    tile = Tile(group=8, pixels=32, groups=1, stage=8, regs=4, layout="groups", splits=splits)
    monkeypatch.setattr(register_reuse, "MAX_JOINED_FMAS", 0)  # link this small layer's pieces apart
    monkeypatch.setattr(rr, "FMAS_PER_LINKED_PIECE", -(-kernel.nnz // 3))
    assert rr.pieces_for(kernel.nnz, 48, tile, rr.FMAS_PER_LINKED_PIECE) == 3
    seen = {}
    dispatcher_source = nvptx_build.dispatcher_source
    monkeypatch.setattr(nvptx_build, "dispatcher_source",
                        lambda metas, k, tail=None: seen.setdefault("dispatcher", dispatcher_source(metas, k, tail)))
    link = nvptx_build.link
    monkeypatch.setattr(nvptx_build, "link", lambda objects, arch="sm_90": seen.setdefault("cubin", link(objects, arch)))
    monkeypatch.setattr(nvptx_build, "build_with_cubin", lambda host, cubin, arch="sm_90": host)
    monkeypatch.setenv(nvptx_build.WORKERS_ENV, "2")
    algorithm = algs.by_name("register-reuse")
    host = algorithm.build(kernel, wl, tile)
    ptx = seen["dispatcher"]
    kernels = ["sparse_conv2d_kernel"] + (["sparse_conv2d_kernel_1"] if splits > 1 else [])
    assert re.findall(r"\.entry (\w+)\(", ptx) == kernels
    assert re.findall(r"\.extern \.func (\w+)\(", ptx) == [f"sparse_conv2d_kernel_piece{i}" for i in range(3)]
    assert ptx.count("call.uni sparse_conv2d_kernel_piece") == 3
    assert seen["cubin"][:4] == b"\x7fELF"
    assert str(host.attrs["global_symbol"]) == "sparse_conv2d"
    # the pieces' code (compiled again here, in this process): every nonzero is one FMA, once
    sources = [nvptx_build.piece_source(nvptx_ptx(algorithm.recipe(kernel, wl, tile, piece=("part", i, 3))()),
                                        "sparse_conv2d_kernel", i)[0] for i in range(3)]
    fmas = re.findall(r"fma\.rn\.f32\s+[^,]+,\s*[^,]+,\s*0f([0-9A-F]{8}),", "".join(sources))
    w = kernel.to_dense()
    assert sorted(struct.unpack(">f", bytes.fromhex(h))[0] for h in fmas) == sorted(w[w != 0].tolist())
    assert all(f".visible .func sparse_conv2d_kernel_piece{i}(" in src and ".extern .shared" in src
               for i, src in enumerate(sources))


def _piece_ptx(n_params: int, shared_bytes: int = 64) -> str:
    params = ",\n".join(f"\t.param .b64 k_param_{i}" for i in range(n_params))
    return (f".version 7.8\n.target sm_90\n.address_size 64\n\n.visible .shared .align 16 .b8 shmem[{shared_bytes}];\n\n"
            f".visible .entry k(\n{params}\n)\n{{\n\tret;\n}}\n")


def test_joining_refuses_pieces_whose_parameters_differ():
    from tvm_sparseconv.nvptx_build import join_pieces

    def piece(n_params):
        params = ",\n".join(f"\t.param .b64 k_param_{i}" for i in range(n_params))
        return f".version 7.8\n.target sm_90\n.address_size 64\n\n.visible .entry k(\n{params}\n)\n{{\n\tret;\n}}\n"

    assert ".func k_piece1(" in join_pieces([piece(2), piece(2)], "k")
    with pytest.raises(RuntimeError, match="parameters"):
        join_pieces([piece(2), piece(3)], "k")


def test_linking_refuses_pieces_whose_parameters_or_shared_arrays_differ():
    from tvm_sparseconv.nvptx_build import dispatcher_source, piece_source

    metas = [piece_source(_piece_ptx(2), "k", i)[1] for i in range(2)]
    assert ".extern .func k_piece1(" in dispatcher_source(metas, "k")
    with pytest.raises(RuntimeError, match="parameters"):
        dispatcher_source([metas[0], piece_source(_piece_ptx(3), "k", 1)[1]], "k")
    with pytest.raises(RuntimeError, match="shared arrays"):
        dispatcher_source([metas[0], piece_source(_piece_ptx(2, 128), "k", 1)[1]], "k")


@pytest.mark.skipif(not (shutil.which("ptxas") and shutil.which("nvlink")), reason="needs ptxas and nvlink")
def test_pieces_assembled_apart_link_into_one_cubin():
    from tvm_sparseconv.nvptx_build import dispatcher_source, link, piece_source

    pieces = [piece_source(_piece_ptx(2), "k", i) for i in range(3)]
    objects = [assemble(src, relocatable=True) for src, _ in pieces]
    objects.append(assemble(dispatcher_source([meta for _, meta in pieces], "k"), relocatable=True))
    assert link(objects)[:4] == b"\x7fELF"


def test_shares_are_contiguous_nonempty_and_balanced_by_nonzeros():
    from tvm_sparseconv.schedules.cuda_register_reuse import _shares

    w = np.zeros((1, 1, 64, 8), np.float32)
    w[0, 0, :16] = 1.0  # stage 0 (of 4 stages of 16) holds half the nonzeros
    w[0, 0, 16:] = np.tile([1.0, 0, 0, 0, 0, 0, 0, 0], (48, 1))
    stages = [(0, 0, s0, 16) for s0 in range(0, 64, 16)]
    shares = _shares(stages, w, 2)
    assert shares == [stages[:1], stages[1:]]
    assert [len(s) for s in _shares(stages, w, 8)] == [1, 1, 1, 1]  # never more shares than stages
    assert _shares(stages, w, 1) == [stages]


def test_the_default_split_keeps_kernels_under_the_fma_budget():
    from tvm_sparseconv.schedules.cuda_register_reuse import FMAS_PER_KERNEL, parts_for

    assert parts_for(1) == 1 and parts_for(FMAS_PER_KERNEL) == 1 and parts_for(FMAS_PER_KERNEL + 1) == 2
    from tvm_sparseconv.algorithms.register_reuse import MAX_UNROLLED_FMAS

    assert parts_for(MAX_UNROLLED_FMAS) == 1  # every layer offered is one kernel (a launch costs us at batch 1)


def _input_loads_after_simplify(emit_fn, cin: int) -> list[str]:
    """The loads of input x (their TVMScript text) in a padded 3x3 kernel after TVM's simplifier."""
    import tvm
    from tvm import tirx

    w = _weights(cin, 8, 0.5, seed=2)[None, None].repeat(3, 0).repeat(3, 1)
    func = emit_fn(w, (1, 6, 6, cin), (6, 6), (1, 1), ((1, 1), (1, 1)), Tile(group=8, pixels=32, groups=1, stage=8, regs=4))
    text = tirx.transform.StmtSimplify()(tvm.IRModule({"main": func}))["main"].script()
    loads = []
    for m in re.finditer(r"\bx\[", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"[": 1, "]": -1}.get(text[i], 0)
            i += 1
        loads.append(text[m.start():i])
    return loads


@pytest.mark.parametrize("cin", [8, 3])  # float4 copies; scalar copies
def test_input_loads_stay_inside_the_input_through_tvm_simplification(cin):
    """The copy loads run for every slot, inside the image or not, so their indices must stay inside
    x for every thread: evaluated here for every thread and block of a padded 3x3 kernel after TVM's
    simplifier (which simplifies a Select's true value under its condition: that once dropped the
    clamp of scalar copies, and compute-sanitizer found reads 5,400 bytes before the input of conv1
    7x7, 3 channels; this test fails on that version)."""
    class T:  # the TVMScript names the index expressions use, as integer functions
        min, max = staticmethod(min), staticmethod(max)

        @staticmethod
        def Ramp(base, stride, lanes):  # noqa: N802 - TVMScript's name
            return (base, base + stride * (lanes - 1))

    loads = _input_loads_after_simplify(emit, cin)
    assert len(loads) == 9 * (2 if cin == 8 else 3)  # 9 taps x copy slots per thread
    for ld in loads:
        for bx in range(2):  # 36 pixels in blocks of 32
            for tx in range(32):
                n, row, col, ch = eval(ld[1:], {"T": T, "blockIdx_x": bx, "threadIdx_x": tx,  # noqa: S307
                                                "threadIdx_y": 0, "blockIdx_y": 0})
                c0, c1 = ch if isinstance(ch, tuple) else (ch, ch)
                assert n == 0 and 0 <= row < 6 and 0 <= col < 6 and 0 <= c0 <= c1 < cin, (ld, bx, tx)


def test_a_piece_that_fails_to_compile_in_its_child_process_is_reported():
    import functools

    from tvm_sparseconv.nvptx_build import _tasks_in_processes

    with pytest.raises(RuntimeError, match="child process failed"):
        _tasks_in_processes([(functools.partial(int, "not a PrimFunc"), 0), (functools.partial(int, "7"), 1)], "k", "sm_90", 2)


def test_a_record_naming_an_unknown_tile_warns_and_is_not_used(tmp_path):
    from tvm_sparseconv import build, targets, tile_records, tuning_records

    _, wl = _layer()
    tile_records.write(tile_records.path_for(tmp_path, "register-reuse"), "register-reuse", "test", "test",
                       [{"layer": "x", "shape": tile_records.shape_key(wl), "tile": "g99p99x9", "seconds": 1e-5}])
    with pytest.warns(tuning_records.TuningLogWarning, match="names an unknown tile 'g99p99x9'"):
        assert build.generated_record(wl, targets.cuda_target_for_arch("sm_90"), tmp_path) is None


def test_register_cap_follows_the_tile_and_is_opt_in():
    """The cap on pieces compiled apart: accumulators + input registers + 80, in steps of 8; only
    the "linked-capped" link mode uses it; an unknown mode is refused by name."""
    from tvm_sparseconv.algorithms import by_name
    from tvm_sparseconv.algorithms.register_reuse import LINK_MODES
    from tvm_sparseconv.schedules.cuda_register_reuse import TILES, register_cap

    assert register_cap(TILES["g32p64x4G"]) == 128 and register_cap(TILES["g64p32x4G"]) == 152
    assert register_cap(Tile(group=256, regs=64)) == 255
    assert "linked-capped" in LINK_MODES and LINK_MODES[0] == "auto"
    kernel, wl = _layer(shape=(1, 4, 4, 8), cout=8, density=0.5)
    with pytest.raises(ValueError, match="link must be one of"):
        by_name("register-reuse").build(kernel, wl, TILES["g32p64x4G"], link="capped")


def test_a_register_cap_reaches_ptxas_only_for_objects_compiled_apart(monkeypatch):
    from tvm_sparseconv import nvptx_build

    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"\x7fELF")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(nvptx_build.subprocess, "run", fake_run)
    nvptx_build.assemble(_piece_ptx(2), relocatable=True, max_registers=96)
    nvptx_build.assemble(_piece_ptx(2), relocatable=True)
    nvptx_build.assemble(_piece_ptx(2), max_registers=96)  # a whole kernel: ptxas chooses
    nvptx_build.assemble(_piece_ptx(2), kernel_registers=80)  # a tile's cap on its kernel
    nvptx_build.assemble(_piece_ptx(2), relocatable=True, kernel_registers=80)  # not on objects
    flags = [[a for a in cmd if "maxrregcount" in a] for cmd in seen]
    assert flags == [["--device-function-maxrregcount=96"], [], [], ["-maxrregcount=80"], []]
    assert all("-O3" in cmd for cmd in seen)


@pytest.mark.skipif(not shutil.which("ptxas"), reason="needs ptxas")
def test_a_tiles_register_cap_is_validated_and_reaches_the_build(monkeypatch):
    from tvm_sparseconv import nvptx_build
    from tvm_sparseconv.schedules.cuda_register_reuse import TILES, Tile

    with pytest.raises(ValueError, match="registers"):
        Tile(registers=16).validate()
    assert TILES["g32p128x2GHR80"].registers == 80 and TILES["g32p128x2GH"].registers == 0
    seen = []
    real = nvptx_build.assemble
    monkeypatch.setattr(nvptx_build, "assemble", lambda ptx, *a, **kw: seen.append(kw) or real(ptx, *a, **kw))
    kernel, wl = _layer()
    algorithm = algorithms.by_name("register-reuse")
    algorithm.build(kernel, wl, TILES["g32p64x4GR80"])
    algorithm.build(kernel, wl, TILES["g32p64x4G"])
    assert [kw.get("kernel_registers") for kw in seen] == [80, None]


@pytest.mark.skipif(not shutil.which("ptxas"), reason="needs ptxas")
def test_ptxas_accepts_the_register_cap_on_a_piece():
    from tvm_sparseconv.nvptx_build import piece_source

    source, _ = piece_source(_piece_ptx(2), "k", 0)
    assert assemble(source, relocatable=True, max_registers=64)[:4] == b"\x7fELF"
