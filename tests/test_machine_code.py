"""Static properties of the CUDA kernels' machine code (nvcc for sm_90, then cuobjdump), no GPU.

What ncu showed bounds union-tf32's KxK kernel on the H200 (stop 42: 72 instructions per tensor-core
mma, most of them decoding taps into addresses) is countable in its machine code; these pin what the
schedule changes of stops 42 and 43 bought, so a later change that undoes them fails here first.
"""

from __future__ import annotations

import shutil

import pytest

from tvm_sparseconv.schedules.cuda_union_tf32 import CUDAUnionTF32

from conftest import load_script

union_sass = load_script("benchmarks/experiments/union_sass.py")

CUOBJDUMP = union_sass.find_cuobjdump()
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or CUOBJDUMP is None,
                                reason="needs nvcc and cuobjdump (the tools extra: nvidia-cuda-cuobjdump)")


@pytest.mark.parametrize("layer,most", [
    ("resnet50_conv2_3x3_b32_g8", 10),  # 41.2 before stop 42's changes, 12.8 with shift-decoded taps
    ("resnet50_conv1_7x7_s2_b32_g8", 10),  # the stem: 53.8, then 13.2
    # stride 2, columns staged by phase: the address is still the pixel's plus the tap (8.8)
    ("resnet50_conv3_3x3_s2_b32_g8", 10),
    ("resnet50_conv4_3x3_b32_g8", 13),  # 7-row blocks held one tile a warp: 41.8, then 18.8
    # whole 7x7 images: a division by 7 per A element 37.5, then 19.1 with offsets in the staged
    # box; 14.5 with the pixels at the box's pitch (`union_tf32.image_pitch`)
    ("resnet50_conv5_3x3_b32_g8", 15),
    # its stride-2 twin, packed by column phase: 30.5; 14.1 at the pitch of its (row, column)
    # phase planes (`union_tf32.image_plane`)
    ("resnet50_conv5_3x3_s2_b32_g8", 15),
    # the 1x1 path, one add per A element: 11.5 (conv3 1x1 reduce's two chunks became one
    # unrolled loop, its copy included, once the 1x1 copy went float4: 529 instructions per 32 mma)
    ("resnet50_conv4_1x1_reduce_b32_g8", 14),
])
def test_union_tf32_k_step_loop_spends_few_instructions_per_mma(layer, most):
    """The untuned union-tf32 kernel's k-step loop (the loop holding the mma) issues at most `most`
    instructions per mma: a tap is its offset in the staged box (an A element's address is its
    pixel's plus the tap), and a warp's tiles share the taps.

    Counted on the template with 4 groups a warp (stop 43's, an untuned variant that tuning
    times): with the default's 2, nvcc unrolls a chunk's few k steps whole, so the loop holding
    the mma is the chunk's, staging copy included (conv4 3x3: 346 instructions per 20 mma)."""
    rule = CUDAUnionTF32()
    rule.untuned_group_regs = (4, 4)
    row = union_sass.count_layer(layer, untuned=True, cuobjdump=CUOBJDUMP, rule=rule)
    k_loop = row["k_loop"]
    assert k_loop is not None and k_loop["mma"] > 0, "no loop with an mma in the kernel"
    assert row["k_loop_instructions_per_mma"] <= most, (layer, k_loop["instructions"], k_loop["mma"])


def test_loops_are_found_in_sass_text():
    """The disassembly parser: instructions with their addresses, and a backward branch's loop."""
    sass = """
        /*0100*/                   IMAD R1, R2, R3, R4 ;
        /*0110*/                   HMMA.1688.F32.TF32 R4, R12, R20, R4 ;
        /*0120*/                   LDS R5, [R6] ;
        /*0130*/               @P0 BRA 0x100 ;
        /*0140*/                   EXIT ;
    """
    instrs = union_sass.sass_instructions(sass)
    assert [op for _, op, _ in instrs] == ["IMAD", "HMMA.1688.F32.TF32", "LDS", "BRA", "EXIT"]
    (loop,) = union_sass.loops(instrs)
    assert (loop["instructions"], loop["mma"], loop["shared_loads"]) == (4, 1, 1)


union_staging_traffic = load_script("benchmarks/experiments/union_staging_traffic.py")


def test_occupancy_takes_the_tightest_of_an_sms_limits():
    """Blocks an SM by CUDA's rules for sm_90 (registers allocated per warp in units of 256),
    waves, and the warps an SM holds while a short grid runs."""
    # conv4 3x3 b32 g8's H100 record: 8 warps of 48 registers -> 5 blocks (registers), 448 blocks
    facts = union_staging_traffic.occupancy_facts(448, 8, 48, 20736)
    assert (facts["blocks_an_sm"], facts["limited_by"]) == (5, "registers")
    assert facts["waves"] == round(448 / (132 * 5), 2) and facts["warps_an_sm"] == round(448 / 132 * 8, 1)
    # 49 registers round up to 56 a thread (1792 a warp): 65536 // (1792 * 8) = 4 blocks
    assert union_staging_traffic.occupancy_facts(448, 8, 49, 20736)["blocks_an_sm"] == 4
    # 32 warps a block: the warp slots allow 2, whatever else is left
    assert union_staging_traffic.occupancy_facts(10000, 32, 32, 1024) == {
        "warps_a_block": 32, "registers": 32, "shared_bytes": 1024, "blocks_an_sm": 2, "limited_by": "warps",
        "waves": round(10000 / 264, 2), "warps_an_sm": 64.0}
    # 100 KB of shared memory a block: 2 fit in 228 KB with 1 KB reserved each
    assert union_staging_traffic.occupancy_facts(1000, 4, 32, 100 * 1024)["limited_by"] == "shared"


@pytest.mark.parametrize("shares", [2, 4])
def test_staging_traffic_counts_a_clusters_shares_as_blocks(shares):
    """A cluster reduction's shares are blocks of their own (blockIdx.y), each staging its share
    of the chunks: as many bytes staged in all as the unsplit template, S times the blocks."""
    from tvm_sparseconv import algorithms, targets, tuning_records
    from tvm_sparseconv.workloads import workload_set

    target = targets.cuda_target_for_arch("sm_90")
    problem = workload_set("resnet50_conv5_1x1_reduce_b1_g8")[0].for_target("cuda")
    k = problem.sparse_kernel()
    wl = algorithms.workload_for(k, problem.workload(k), "union-tf32")
    func = tuning_records.workload_module(wl)["main"]
    facts = []
    for slices, cluster in ((1, False), (shares, True)):
        rule = CUDAUnionTF32()
        rule.reduction_slices, rule.reduction_in_cluster = slices, cluster
        facts.append(union_staging_traffic.scheduled_facts(rule.apply(func, target, False).mod, wl, rule))
    unsplit, clustered = facts
    assert clustered["blocks"] == shares * unsplit["blocks"] and clustered["chunks"] * shares == unsplit["chunks"]
    assert clustered["staged_mb"] == unsplit["staged_mb"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_ptxas_reports_a_kernels_registers_and_shared_memory():
    """`ptxas_resources` reads what nvcc's sm_90 build of a kernel uses."""
    source = """
extern "C" __global__ void __launch_bounds__(128) k(float* __restrict__ out) {
  __shared__ float tile[512];
  tile[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x * 7) % 128] + tile[511 - threadIdx.x];
}
"""
    registers, shared = union_staging_traffic.ptxas_resources(source)
    assert 1 <= registers <= 32 and shared == 2048


def test_the_mma_peak_experiments_kernels_build_for_sm_90():
    """`benchmarks/experiments/mma_tf32_peak.py` (run on the GPU machine) builds, every chain an
    m16n8k8 TF32 mma.sync in the PTX, as the union kernels issue them (none optimised away)."""
    counts = load_script("benchmarks/experiments/mma_tf32_peak.py").check_ptx([1, 3])
    assert all(n >= chains and n % chains == 0 for chains, n in counts.items()), counts
