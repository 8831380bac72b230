"""Compile a CUDA PrimFunc through LLVM's NVPTX backend instead of nvcc (for very long kernels).

nvcc's front end (`cicc`) is superlinear in a function's size: on the 2-core machine a
straight-line kernel of 6,618 FMAs took 45 s and one of 26,167 more than 120 s, while this path
(LLVM's NVPTX backend inside TVM, then ptxas) took 4.3 s and 31.7 s
(benchmarks/experiments/unrolled_compile_time-x86_64-2cores.json). TVM 0.27's NVPTX path needs
three repairs, made here:

- its storage sync (and any one-operand LLVM intrinsic call) loses its operand with the bundled
  LLVM, so such functions bring their own barrier (`llvm_barrier`) and build with the "tirx"
  pipeline, which inserts none;
- kernels are marked with `nvvm.annotations` metadata that this LLVM no longer reads, so they come
  out as device `.func`s: they are renamed `.entry` in the PTX;
- its CUDA module cannot be written out (`export_library`), so the PTX is assembled with ptxas and
  handed to TVM's CUDA build of the same function (same kernel name and arguments; its C source is
  not compiled) through the `tvm_callback_cuda_compile` hook.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

import tvm
import tvm_ffi
from tvm import tirx

KERNEL_SUFFIX = "_kernel"
_HOOK_LOCK = threading.Lock()


def llvm_barrier(threads: int) -> tirx.Stmt:
    """`bar.sync 0, threads` as LLVM's intrinsic (the block barrier for the NVPTX backend)."""
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.nvvm.barrier.cta.sync.aligned.count",
                                               tirx.const(0, "int32"), tirx.const(threads, "int32")))


def _libdevice_env() -> None:
    """TVM finds libdevice under `$CUDA_PATH/nvvm`; point it at the usual install when unset."""
    if "CUDA_PATH" not in os.environ and Path("/usr/local/cuda/nvvm/libdevice").is_dir():
        os.environ["CUDA_PATH"] = "/usr/local/cuda"


def nvptx_ptx(func: tirx.PrimFunc, arch: str = "sm_90") -> str:
    """PTX of `func` from LLVM's NVPTX backend, its kernel marked `.entry`."""
    _libdevice_env()
    name = str(func.attrs["global_symbol"])
    ex = tvm.compile(tvm.IRModule({name: func}), target=tvm.target.Target({"kind": "nvptx", "mcpu": arch}),
                     tir_pipeline="tirx")
    ptx = ex.mod.imports[0].inspect_source()
    # Every kernel of the function (one per launch: name_kernel, name_kernel_1, ...)
    marked, n = re.subn(rf"\.visible \.func ({re.escape(name + KERNEL_SUFFIX)}\w*)\(", r".visible .entry \1(", ptx)
    if n == 0 and f".entry {name + KERNEL_SUFFIX}" not in ptx:
        raise RuntimeError(f"no kernel {name + KERNEL_SUFFIX!r} in the NVPTX output")
    return marked


def assemble(ptx: str, arch: str = "sm_90") -> bytes:
    """ptxas: PTX to a cubin for `arch`."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        src.write_text(ptx)
        done = subprocess.run(["ptxas", f"-arch={arch}", "-O3", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"ptxas failed: {done.stderr.strip()[-2000:]}")
        return out.read_bytes()


def build_with_cubin(c_func: tirx.PrimFunc, cubin: bytes, arch: str = "sm_90") -> tvm.runtime.Executable:
    """TVM's CUDA build of `c_func` with its kernel taken from `cubin` instead of nvcc."""
    from tvm.support import nvcc

    name = str(c_func.attrs["global_symbol"])
    with _HOOK_LOCK:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", lambda code: cubin, override=True)
        try:
            return tvm.compile(tvm.IRModule({name: c_func}), target=tvm.target.Target({"kind": "cuda", "arch": arch}),
                               tir_pipeline="tirx")
        finally:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", nvcc.tvm_callback_cuda_compile, override=True)


def compile_nvptx(make: Callable[[bool], tirx.PrimFunc], arch: str = "sm_90") -> tvm.runtime.Executable:
    """Build the kernel `make(llvm=True)` through NVPTX + ptxas into a CUDA module whose host side
    comes from `make(llvm=False)` (the same function with TVM's CUDA barrier)."""
    return build_with_cubin(make(False), assemble(nvptx_ptx(make(True), arch), arch), arch)
