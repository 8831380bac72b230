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

Long code can be compiled in pieces in child processes and joined into one kernel
(`compile_nvptx_pieces`, `join_pieces`): one launch, as fast as the single kernel, compiled in
parallel.
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


def assemble(ptx: str, arch: str = "sm_90", threads: int = 1) -> bytes:
    """ptxas: PTX to a cubin for `arch` (`threads` > 1, or 0 for one per CPU: its functions
    compiled in parallel, `--split-compile`)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        src.write_text(ptx)
        split = [f"--split-compile={threads}"] if threads != 1 else []
        done = subprocess.run(["ptxas", f"-arch={arch}", "-O3", *split, "-o", str(out), str(src)],
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


# --- long code in pieces: compiled apart (in parallel), joined into one kernel ----------------------
#: environment variable: child processes per compile_nvptx_pieces (default one per CPU)
WORKERS_ENV = "TVM_SPARSECONV_COMPILE_WORKERS"
_FUNCTION_START = re.compile(r"^(?:\.visible |\.weak |\.extern )?\.(?:entry|func)\b")
_SHARED = re.compile(r"^\.visible \.shared \.align (\d+) \.b8 (\w+)\[(\d+)\];$")
_HEADER = (".version", ".target", ".address_size")


def _top_level(ptx: str) -> tuple[list[str], dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """(header lines, shared arrays {name: (align, bytes)}, functions [(name, text)]) of a PTX module
    as LLVM's NVPTX backend writes it; anything else at the top level is refused (not expected)."""
    header, shared, functions = [], {}, []
    lines = ptx.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("//"):
            i += 1
        elif line.startswith(_HEADER):
            header.append(line)
            i += 1
        elif (m := _SHARED.match(line)):
            shared[m.group(2)] = (int(m.group(1)), int(m.group(3)))
            i += 1
        elif _FUNCTION_START.match(line):
            start = i
            while lines[i] != "}":
                i += 1
            name = re.search(r"(\w+)\(", "\n".join(lines[start:start + 2])).group(1)
            functions.append((name, "\n".join(lines[start:i + 1])))
            i += 1
        else:
            raise RuntimeError(f"unexpected top-level PTX line (cannot join pieces): {line!r}")
    return header, shared, functions


def join_pieces(pieces: list[str], kernel: str, tail: str | None = None) -> str:
    """One PTX module whose kernel `kernel` runs each piece's kernel `kernel` in turn, and (if given)
    `tail`'s kernel `kernel` as `kernel`_1.

    Each piece's kernel becomes a device function (`.func`, same parameters); the new kernel loads
    its parameters and calls every piece with them (`call.uni`: every piece must be block-uniform
    in what it skips, as `emit`'s guarded pieces are). The pieces' shared arrays of one name
    become one array of the largest size (the pieces run one after the other); helper functions
    that several pieces carry (LLVM's half-float conversions) are kept once."""
    header, shared, helpers, bodies, params = None, {}, {}, [], None
    for i, ptx in enumerate(pieces):
        head, sh, functions = _top_level(ptx)
        header = header or head
        for name, (align, size) in sh.items():
            old = shared.get(name, (0, 0))
            shared[name] = (max(align, old[0]), max(size, old[1]))
        mains = [text for name, text in functions if name == kernel]
        others = [name for name, text in functions if name != kernel and ".entry" in text.split("(")[0]]
        if len(mains) != 1 or others:
            raise RuntimeError(f"piece {i}: expected one kernel {kernel!r}, found {[n for n, _ in functions]}")
        text = mains[0]
        types = re.findall(rf"\.param (\.\w+) {kernel}_param_\d+", text)
        if params is not None and types != params:
            raise RuntimeError(f"piece {i}: parameters {types} differ from piece 0's {params}")
        params = types
        text = re.sub(rf"\b{kernel}\b", f"{kernel}_piece{i}", text.replace(kernel + "_param_", f"{kernel}_piece{i}_param_"))
        bodies.append(re.sub(r"^\.visible \.entry ", ".func ", text))
        helpers.update({name: t for name, t in functions if name != kernel})
    regs = "\n".join(f"\tld.param{t} \t%p{k}, [{kernel}_param_{k}];" for k, t in enumerate(params))
    calls = []
    for i in range(len(pieces)):
        decls = "\n".join(f"\t.param {t} a{k};\n\tst.param{t} \t[a{k}], %p{k};" for k, t in enumerate(params))
        args = ", ".join(f"a{k}" for k in range(len(params)))
        calls.append(f"\t{{\n{decls}\n\tcall.uni {kernel}_piece{i}, ({args});\n\t}}")
    reg_decls = "\n".join(f"\t.reg {t} \t%p{k};" for k, t in enumerate(params))
    dispatcher = (f".visible .entry {kernel}(\n"
                  + ",\n".join(f"\t.param {t} {kernel}_param_{k}" for k, t in enumerate(params))
                  + f"\n)\n{{\n{reg_decls}\n{regs}\n" + "\n".join(calls) + "\n\tret;\n}")
    out = list(header) + [f".visible .shared .align {a} .b8 {n}[{s}];" for n, (a, s) in shared.items()]
    out += list(helpers.values()) + bodies + [dispatcher]
    if tail is not None:
        _, sh, functions = _top_level(tail)
        for name, (align, size) in sh.items():
            if name in shared:
                raise RuntimeError(f"the tail's shared array {name!r} would collide with the pieces'")
            out.insert(len(header), f".visible .shared .align {align} .b8 {name}[{size}];")
        for name, text in functions:
            if name == kernel:
                out.append(re.sub(rf"\b{kernel}(_param_\d+)?\b", lambda m: f"{kernel}_1{m.group(1) or ''}", text))
            elif name not in helpers:
                out.append(text)
    return "\n\n".join(out) + "\n"


def _ptx_of_recipes(recipes: list, arch: str) -> list[str]:
    """PTX of each recipe's PrimFunc (a picklable callable returning it), in this process."""
    return [nvptx_ptx(r(), arch) for r in recipes]


def _ptx_in_processes(recipes: list, arch: str, workers: int) -> list[str]:
    """`_ptx_of_recipes` spread over `workers` child interpreters (`python -m
    tvm_sparseconv.nvptx_worker`: no re-import of the caller's main module, unlike multiprocessing's
    spawn), each compiling every workers-th recipe."""
    import pickle
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for k in range(workers):
            job = Path(tmp, f"job{k}.pkl")
            job.write_bytes(pickle.dumps((recipes[k::workers], arch)))
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm_sparseconv.nvptx_worker", str(job)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        # every child is waited for before a failure is raised: none outlives the folder it writes to
        errors = [err for proc in procs for _, err in [proc.communicate()] if proc.returncode]
        if errors:
            raise RuntimeError(f"compiling pieces in a child process failed: {errors[0].strip()[-2000:]}")
        results = [pickle.loads(Path(tmp, f"job{k}.pkl.out").read_bytes()) for k in range(workers)]
    ptx = [None] * len(recipes)
    for k, done in enumerate(results):
        ptx[k::workers] = done
    return ptx


def compile_nvptx_pieces(host: tirx.PrimFunc, pieces: list, tail=None, arch: str = "sm_90",
                         workers: int | None = None) -> tvm.runtime.Executable:
    """Like `compile_nvptx`, for code too long to compile fast as one function: each of `pieces`
    (picklable callables returning a PrimFunc with one kernel, e.g. `functools.partial(emit, ...,
    piece=("part", i, n))`) goes through NVPTX apart, `workers` at a time in child processes
    (default: `$TVM_SPARSECONV_COMPILE_WORKERS`, else one per CPU), and `join_pieces` makes them one kernel (ptxas then compiles the
    pieces' functions in parallel threads). `tail`: the recipe of the function's second kernel.
    `host`: the whole function's host side (one launch of the joined kernel, then the tail's)."""
    recipes = list(pieces) + ([tail] if tail is not None else [])
    workers = workers or int(os.environ.get(WORKERS_ENV, 0)) or os.cpu_count() or 1
    workers = max(1, min(workers, len(recipes)))
    ptx = _ptx_of_recipes(recipes, arch) if workers == 1 else _ptx_in_processes(recipes, arch, workers)
    name = str(host.attrs["global_symbol"]) + KERNEL_SUFFIX
    joined = join_pieces(ptx[:len(pieces)], name, ptx[-1] if tail is not None else None)
    return build_with_cubin(host, assemble(joined, arch, threads=0), arch)
