#!/usr/bin/env python
"""How fast the H100 runs `mma.sync` TF32 (what the union kernels issue) against cuBLAS's TF32 GEMM.

    python benchmarks/experiments/mma_tf32_peak.py --json $OUT/mma_tf32_peak.json   # on the GPU machine
    python benchmarks/experiments/mma_tf32_peak.py --ptx                            # no GPU: nvcc check

The union algorithms (`union-tf32`, `union-tf32-async`) multiply on the tensor cores through
`mma.sync.aligned.m16n8k8` (TVM's PTX builtin: SASS `HMMA`). Hopper's fast path is `wgmma`
(`HGMMA`, sm_90a), which TVM 0.27 does not emit and which cuBLAS and cuDNN use there. A union
kernel does the dense work of the union of its group's taps (1 - 0.9^8 = 57% of the dense taps
for groups of 8 channels at 10% density), so at best it runs

    (mma.sync peak / the dense library's TF32 rate) / 0.57

times as fast as cuDNN TF32 on the same layer. This measures both rates in one process: a
kernel of independent `mma.sync` chains per warp (operands in registers: no memory traffic),
swept over chains a warp, warps a block and blocks an SM, timed with CUDA events; and
`torch.matmul` in TF32 on square matrices (cuBLAS). It writes the sweep and the bound as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOPS_PER_MMA = 2 * 16 * 8 * 8  # one warp's m16n8k8
#: a group of 8 output channels at 10% density: the share of the dense taps its union keeps
UNION_SHARE_G8_D10 = 1 - 0.9 ** 8


def kernel_source(chains: int) -> str:
    """A kernel whose every warp runs `iters` x `chains` independent m16n8k8 TF32 mma.sync."""
    acc = ", ".join(f"c{c}_{j} = 0.f" for c in range(chains) for j in range(4))
    mmas = "\n".join(
        f'        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 '
        f'{{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};" '
        f': "+f"(c{c}_0), "+f"(c{c}_1), "+f"(c{c}_2), "+f"(c{c}_3) '
        f': "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));'
        for c in range(chains))
    total = " + ".join(f"c{c}_{j}" for c in range(chains) for j in range(4))
    return f"""
extern "C" __global__ void mma_loop(float* out, int iters) {{
    unsigned a0 = __float_as_uint(threadIdx.x * 1e-3f), a1 = __float_as_uint(1.f), a2 = a0 ^ 1u, a3 = a1;
    unsigned b0 = __float_as_uint(blockIdx.x * 1e-6f), b1 = __float_as_uint(0.5f);
    float {acc};
    for (int i = 0; i < iters; ++i) {{
{mmas}
    }}
    out[blockIdx.x * blockDim.x + threadIdx.x] = {total};
}}
"""


def check_ptx(chains_list: list[int]) -> dict[int, int]:
    """Compile each kernel with nvcc for sm_90 (no GPU needed); the mma instructions in each one's
    PTX by chains (nvcc unrolls the loop: a multiple of the chains)."""
    counts = {}
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        for chains in chains_list:
            src = Path(tmp) / f"mma{chains}.cu"
            src.write_text(kernel_source(chains))
            subprocess.run([nvcc, "-arch=sm_90", "-ptx", str(src), "-o", str(src.with_suffix(".ptx"))], check=True)
            n = src.with_suffix(".ptx").read_text().count("mma.sync.aligned.m16n8k8")
            print(f"chains {chains}: nvcc sm_90 ok, {n} mma.sync in its PTX")
            counts[chains] = n
    return counts


def time_kernel(cp, kernel, blocks: int, threads: int, iters: int, repeats: int) -> float:
    """Median seconds of one launch (CUDA events)."""
    out = cp.empty(blocks * threads, dtype=cp.float32)
    kernel((blocks,), (threads,), (out, cp.int32(iters)))  # warm-up (and the NVRTC build)
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        kernel((blocks,), (threads,), (out, cp.int32(iters)))
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    assert bool(cp.isfinite(out).all()), "the mma kernel's output is not finite"
    return sorted(times)[len(times) // 2]


def gemm_tf32(torch, n: int, repeats: int) -> dict:
    """TFLOP/s of torch.matmul (cuBLAS) on n x n fp32 matrices, TF32 allowed and not."""
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    out = {}
    for name, allow in (("tf32", True), ("fp32", False)):
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e-3)
        s = sorted(times)[len(times) // 2]
        out[name] = {"seconds": s, "tflops": 2 * n ** 3 / s / 1e12}
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", default="1,2,4,8", help="independent mma chains a warp, comma-separated")
    ap.add_argument("--warps", default="4,8", help="warps a block, comma-separated")
    ap.add_argument("--blocks-per-sm", default="1,2,4,8", help="blocks an SM, comma-separated")
    ap.add_argument("--iters", type=int, default=4096, help="loop trips a warp")
    ap.add_argument("--gemm-n", type=int, default=8192, help="square GEMM size for cuBLAS")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, help="write the sweep and the bound here")
    ap.add_argument("--ptx", action="store_true", help="only compile the kernels with nvcc for sm_90 (no GPU)")
    args = ap.parse_args(argv)
    chains_list = [int(c) for c in args.chains.split(",")]
    if args.ptx:
        check_ptx(chains_list)
        return 0
    import cupy as cp
    import torch

    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    rows = []
    for chains in chains_list:
        kernel = cp.RawKernel(kernel_source(chains), "mma_loop", options=("-arch=sm_90",))
        for warps in (int(w) for w in args.warps.split(",")):
            for per_sm in (int(b) for b in args.blocks_per_sm.split(",")):
                blocks = sms * per_sm
                s = time_kernel(cp, kernel, blocks, 32 * warps, args.iters, args.repeats)
                flops = blocks * warps * args.iters * chains * FLOPS_PER_MMA
                rows.append({"chains": chains, "warps": warps, "blocks_per_sm": per_sm, "seconds": s,
                             "tflops": flops / s / 1e12})
                print(f"chains {chains} warps {warps} blocks/SM {per_sm}: {rows[-1]['tflops']:.1f} TFLOP/s")
    gemm = gemm_tf32(torch, args.gemm_n, args.repeats)
    best = max(rows, key=lambda r: r["tflops"])
    ratio = best["tflops"] / gemm["tf32"]["tflops"]
    bound = ratio / UNION_SHARE_G8_D10
    print(f"mma.sync TF32 peak {best['tflops']:.1f} TFLOP/s; cuBLAS TF32 {gemm['tf32']['tflops']:.1f}, "
          f"fp32 {gemm['fp32']['tflops']:.1f}; ratio {ratio:.2f}; a g8 union at 10% density at best "
          f"{bound:.2f}x the dense library's TF32 time")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "sms": sms, "iters": args.iters,
            "mma_sync": rows, "mma_sync_peak_tflops": best["tflops"], "gemm_n": args.gemm_n, "cublas": gemm,
            "mma_sync_vs_cublas_tf32": ratio, "union_share_g8_d10": UNION_SHARE_G8_D10,
            "union_bound_vs_dense_tf32": bound,
            "versions": {"torch": torch.__version__, "cupy": cp.__version__}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
