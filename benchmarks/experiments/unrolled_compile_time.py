"""Experiment: compile time of a pattern-in-the-code 1x1 kernel, nvcc (cicc) against LLVM's NVPTX.

For ResNet-50-like 1x1 weight matrices at 10% density: (a) the straight-line CUDA C of one FMA per
nonzero (32 output channels per thread, 16 inputs in registers, a switch over channel groups)
through `nvcc -cubin`, and (b) the register-reuse TIR kernel (`schedules/cuda_register_reuse.py`, tile g32p64x4)
through `tvm_sparseconv.nvptx_build` (LLVM NVPTX + ptxas), as one kernel and split into kernels
of at most `FMAS_PER_KERNEL` FMAs (one per block of 128 channels at most). nvcc has a time limit.

    python benchmarks/experiments/unrolled_compile_time.py --json benchmarks/experiments/unrolled_compile_time-x86_64-2cores.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def weights(cin: int, cout: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((cin, cout)) * (rng.random((cin, cout)) < 0.1)).astype(np.float32)


def cuda_source(w: np.ndarray, group: int = 32, regs: int = 16) -> str:
    """Straight-line CUDA C: per group of output channels, one fmaf per nonzero."""
    cin, cout = w.shape
    lines = ['extern "C" __global__ void __launch_bounds__(128) k(const float* __restrict__ x, float* __restrict__ y, int P) {',
             " int p = blockIdx.x * 128 + threadIdx.x; if (p >= P) return;",
             f" const float4* xp = reinterpret_cast<const float4*>(x + (long)p * {cin});",
             f" float acc[{group}]; float xr[{regs}];", " switch (blockIdx.y) {"]
    for g in range(cout // group):
        lines += [f" case {g}: {{", f"  for (int j = 0; j < {group}; ++j) acc[j] = 0.f;"]
        for c0 in range(0, cin, regs):
            blk = w[c0:c0 + regs, g * group:(g + 1) * group]
            if not blk.any():
                continue
            for v in range(regs // 4):
                lines.append(f"  {{ float4 t = __ldg(xp + {c0 // 4 + v}); xr[{4 * v}] = t.x; xr[{4 * v + 1}] = t.y; "
                             f"xr[{4 * v + 2}] = t.z; xr[{4 * v + 3}] = t.w; }}")
            lines += [f"  acc[{j}] = fmaf(xr[{k}], {float(blk[k, j])!r}f, acc[{j}]);" for k, j in zip(*np.nonzero(blk))]
        lines += [f"  for (int j = 0; j < {group}; ++j) y[(long)p * {cout} + {g * group} + j] = acc[j];", "  break; }"]
    return "\n".join(lines + [" }", "}"])


def time_nvcc(w: np.ndarray, limit: float) -> float | None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.cu")
        src.write_text(cuda_source(w))
        t0 = time.perf_counter()
        try:
            subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-cubin", "-o", str(Path(tmp, "k.cubin")), str(src)],
                           check=True, capture_output=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return None
        return time.perf_counter() - t0


def time_nvptx(w: np.ndarray, parts: int | None) -> float:
    from tvm_sparseconv.nvptx_build import compile_nvptx
    from tvm_sparseconv.schedules.cuda_register_reuse import Tile, emit

    shape, tile = (32, 14, 14, w.shape[0]), Tile(group=32, pixels=64, groups=4, stage=64, regs=16)
    t0 = time.perf_counter()
    compile_nvptx(lambda llvm: emit(w, shape, (14, 14), (1, 1), ((0, 0), (0, 0)), tile, llvm=llvm, parts=parts))
    return time.perf_counter() - t0


def parts_for(fmas: int) -> int:
    from tvm_sparseconv.schedules.cuda_register_reuse import parts_for as split

    return split(fmas)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64x256,128x256,256x256,1024x256,2048x512", help="CinxCout list")
    ap.add_argument("--max-single", type=int, default=30000,
                    help="time nvcc and the one-kernel NVPTX build only up to this many FMAs")
    ap.add_argument("--nvcc-limit", type=float, default=120.0, help="seconds before an nvcc compile is given up")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes.split(","):
        cin, cout = map(int, size.split("x"))
        w = weights(cin, cout)
        fmas = int(np.count_nonzero(w))
        single = fmas <= args.max_single
        nvcc_s = time_nvcc(w, args.nvcc_limit) if single else None
        one_kernel_s = time_nvptx(w, parts=1) if single else None
        split_s = time_nvptx(w, parts=None)
        rows.append({"cin": cin, "cout": cout, "fmas": fmas, "nvcc_s": nvcc_s,
                     "nvcc_timed_out": single and nvcc_s is None, "nvptx_one_kernel_s": one_kernel_s,
                     "nvptx_split_s": split_s, "kernels": min(parts_for(fmas), -(-cout // 128))})
        fmt = lambda v: "-" if v is None else f"{v:.1f} s"  # noqa: E731
        print(f"{cin}x{cout}: {fmas} FMAs  nvcc {fmt(nvcc_s) if not rows[-1]['nvcc_timed_out'] else '> %.0f s' % args.nvcc_limit}"
              f"  NVPTX one kernel {fmt(one_kernel_s)}  split into {rows[-1]['kernels']} {fmt(split_s)}", flush=True)
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "nvcc": subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1],
            "nvcc_limit_s": args.nvcc_limit}
    Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
