"""csr-split-k without a GPU: its weight format, its tiles, and its CUDA source compiling with nvcc
for sm_90 (the kernels' results are checked on the GPU: tests/test_gpu.py -k csr_split_k)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, targets, tile_records
from tvm_sparseconv.schedules.cuda_csr_split_k import PTR_STEP, TILES, Tile, pack, ptr_columns, shared_bytes, unpack
from tvm_sparseconv.tuning_records import logs_root
from tvm_sparseconv.workload import ConvWorkload
from tvm_sparseconv.workloads import workload_set

ALG = algorithms.by_name("csr-split-k")


def _kernel(cin: int, cout: int, density: float, seed: int = 0) -> tuple[np.ndarray, tsc.SparseKernel]:
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((1, 1, cin, cout)) < density, rng.standard_normal((1, 1, cin, cout)), 0).astype(np.float32)
    w[..., 0] = 0.0  # an empty output channel
    return w, tsc.SparseKernel.from_dense(w)


@pytest.mark.parametrize("cin,cout", [(200, 72), (30, 24), (2048, 16)])
def test_the_packed_rows_rebuild_the_kernel_chunk_by_chunk(cin, cout):
    w, kernel = _kernel(cin, cout, 0.15)
    ptr, weights = pack(kernel)
    values, channels = unpack(weights)
    ptr = ptr.reshape(cout, ptr_columns(cin))
    for co in range(cout):
        for i in range(ptr.shape[1] - 1):  # each PTR_STEP slice of input channels holds exactly its nonzeros
            lo, hi = ptr[co, i], ptr[co, i + 1]
            dense = np.zeros(cin, np.float32)
            dense[channels[lo:hi]] = values[lo:hi]
            seg = slice(i * PTR_STEP, (i + 1) * PTR_STEP)
            assert np.array_equal(dense[seg], w[0, 0, seg, co])
            assert np.all((channels[lo:hi] >= seg.start) & (channels[lo:hi] < seg.stop))
    assert ptr[-1, -1] == kernel.nnz


def test_a_kernel_of_zeros_packs_nonempty_arrays():
    _, kernel = _kernel(32, 8, 0.0)
    ptr, weights = pack(kernel)
    assert not ptr.any() and weights.size == 1


def test_tiles_are_named_by_their_fields_and_fit_shared_memory():
    for name, tile in TILES.items():
        assert name == tile.name and tile.chunk % PTR_STEP == 0
        assert shared_bytes(tile) <= 48 * 1024 and tile.columns * tile.per_thread >= tile.pixels


def test_it_applies_to_1x1_cuda_layers_only():
    wl = workload_set("resnet50_conv5_1x1_reduce_b1")[0].workload()
    assert ALG.applies(wl, "cuda") and not ALG.applies(wl, "llvm")
    assert not ALG.applies(workload_set("resnet50_conv5_3x3_b1")[0].workload(), "cuda")


def _cuda_source(kernel, wl, tile: Tile) -> str:
    lib = ALG.build(kernel, wl, tile, targets.cuda_target_for_arch("sm_90"))
    return next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("bias,activation,tile", [(True, "relu", "p49q2r16k64t256"), (False, None, "p16q4r16k256t256")])
def test_the_cuda_source_compiles_with_nvcc(bias, activation, tile):
    """Split chunks (atomics: a bias/zero kernel first, activation last) and one chunk (direct stores)."""
    from tvm.support import nvcc

    w, kernel = _kernel(200, 72, 0.1)
    wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 7, 7, 200), kernel.shape, kernel.ell_width,
                                                             has_bias=bias, activation=activation), ALG.name)
    src = _cuda_source(kernel, wl, TILES[tile])
    kernels = src.count("__global__ void") // 2  # declared, then defined
    assert ("atomicAdd" in src) == (TILES[tile].chunk < 200)
    assert kernels == (1 if TILES[tile].chunk >= 200 else 2 + (activation is not None))
    with targets.cuda_target_for_arch("sm_90"):
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")) > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("bias,activation", [(True, "relu6"), (False, None)])
def test_a_cluster_tile_is_one_kernel_that_adds_up_the_chunks_in_distributed_shared_memory(bias, activation):
    """No bias/zero kernel, no atomics, no activation kernel: two cluster barriers, the chunks'
    sums read rank by rank with mapa + ld.shared::cluster, and the launch names the cluster."""
    from tvm.support import nvcc

    w, kernel = _kernel(200, 72, 0.1)  # 200 channels in chunks of 64: a cluster of 4, the last chunk short
    wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 7, 7, 200), kernel.shape, kernel.ell_width,
                                                             has_bias=bias, activation=activation), ALG.name)
    tile = TILES["p49q2r16k64t256C"]
    assert tile.reduce == "cluster" and ALG.fits(wl, tile)
    src = _cuda_source(kernel, wl, tile)
    assert src.count("__global__ void") // 2 == 1 and "atomicAdd" not in src
    body = src[src.index("__global__ void __launch_bounds__(256) sparse_conv2d_kernel("):]
    assert body.count("tvm_builtin_cuda_cluster_sync();") == 2 and "ld.shared::cluster.f32" in src
    assert "rank < 4" in body  # the ranks walked in a fixed order
    with targets.cuda_target_for_arch("sm_90"):
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")) > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_the_pipelined_walk_hoists_the_row_pointers_and_compiles(monkeypatch):
    """v8 (`PIPELINED`, off by default: it lost): the items' row pointers and first weights are
    loaded before the copy's barrier, and nvcc builds it; an unknown part to leave out is an error."""
    from tvm.support import nvcc

    from tvm_sparseconv.schedules import cuda_csr_split_k

    _, kernel = _kernel(200, 72, 0.2)
    wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 7, 7, 200), kernel.shape, kernel.ell_width), ALG.name)
    tile = TILES["p32q2r32k64t256"]
    plain = _cuda_source(kernel, wl, tile)
    monkeypatch.setattr(cuda_csr_split_k, "PIPELINED", True)
    src = _cuda_source(kernel, wl, tile)
    assert "cnt_l" not in plain and src != plain
    body = src[src.index("sparse_conv2d_kernel_1(float"):]
    assert body.index("cnt_l_ptr[0] =") < body.index("__syncthreads()")
    with targets.cuda_target_for_arch("sm_90"):
        assert len(nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")) > 0
    monkeypatch.setattr(cuda_csr_split_k, "ABLATE", frozenset({"weights"}))
    with pytest.raises(ValueError, match="unknown parts to leave out"):
        _cuda_source(kernel, wl, tile)


def test_cluster_tiles_need_two_to_eight_chunks():
    from tvm_sparseconv.schedules.cuda_csr_split_k import emit, reduces_in_cluster

    tile = TILES["p16q2r16k64t256C"]
    assert [reduces_in_cluster(cin, tile) for cin in (64, 65, 512, 513, 2048)] == [False, True, True, False, False]
    for cin in (64, 2048):
        _, kernel = _kernel(cin, 16, 0.1)
        wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 4, 4, cin), kernel.shape, kernel.ell_width),
                                     ALG.name)
        assert not ALG.fits(wl, tile)
        with pytest.raises(ValueError, match="needs 2 to 8 chunks"):
            emit(wl.input_shape, wl.output_hw, wl.strides, wl.pads, 16, int(kernel.nnz), tile)


def _committed() -> list[dict]:
    return tile_records.read(tile_records.path_for(logs_root() / "nvidia-h200", ALG.name), ALG.name)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("record", _committed(), ids=lambda r: f"{r['layer']}-{r['tile']}")
def test_the_committed_records_name_known_tiles_of_real_layers_and_compile(record):
    from tvm.support import nvcc

    from tvm_sparseconv.tile_tuning import generated_workload

    assert record["tile"] in TILES
    kernel, wl = generated_workload(workload_set(record["layer"])[0], ALG.name, "cuda")
    assert record["shape"] == tile_records.shape_key(wl) and ALG.fits(wl, TILES[record["tile"]])
    with targets.cuda_target_for_arch("sm_90"):
        assert len(nvcc.compile_cuda(_cuda_source(kernel, wl, TILES[record["tile"]]), target_format="cubin",
                                     arch="sm_90", compiler="nvcc")) > 0


@pytest.mark.parametrize("chunk", [16, 64, 256])
def test_the_longest_segment_is_the_most_nonzeros_of_a_channel_in_one_chunk(chunk):
    from tvm_sparseconv.schedules.cuda_csr_split_k import longest_segment

    w, kernel = _kernel(200, 24, 0.3, seed=3)
    nz = w[0, 0] != 0
    want = max(int(nz[c:c + chunk, co].sum()) for co in range(24) for c in range(0, 200, chunk))
    assert longest_segment(pack(kernel)[0], 200, chunk) == want


def test_weights_go_to_shared_memory_where_they_fit_when_asked(monkeypatch):
    from tvm_sparseconv.schedules import cuda_csr_split_k

    w, kernel = _kernel(2048, 64, 0.1)
    wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 7, 7, 2048), kernel.shape, kernel.ell_width), ALG.name)
    assert ALG.weights_segment(kernel, wl, TILES["p32q2r64k64t256"]) is None  # off by default (measured slower)
    monkeypatch.setattr(cuda_csr_split_k, "SHARED_WEIGHTS", True)
    w, kernel = _kernel(2048, 64, 0.1)
    wl = algorithms.workload_for(kernel, ConvWorkload.create((1, 7, 7, 2048), kernel.shape, kernel.ell_width), ALG.name)
    assert ALG.weights_segment(kernel, wl, TILES["p32q2r64k64t256"]) is not None
    dense = _kernel(2048, 64, 0.9)[1]  # ~230 of 256 per chunk: over the unroll limit
    assert ALG.weights_segment(dense, wl, TILES["p16q2r64k256t256"]) is None
