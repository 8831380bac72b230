"""TVM's generated CUDA, run on the CPU: a check of the GPU kernels' logic on machines without a GPU.

`emulate(mod, target)` builds `mod` for CUDA exactly as `tir_build.compile_tir` does, takes the CUDA
C source TVM generated and the host function's sequence of kernel launches (grid, block, which
buffers), and compiles both with g++ into a program in which every CUDA thread of a block is a
fiber of one CPU thread (`prelude.h`): the threads of a block run in turn up to each barrier, in
forward order and then in reverse (so a read that a missing barrier leaves racing often sees the
other order's value), blocks one after another, atomics exactly. Host buffers sit between
inaccessible pages, so a kernel that reads or writes past an array stops with a fault
(`EmulatedFault`, naming the launch) instead of passing; shared memory starts as NaN in every block.

What it shows: that the generated kernels compute the right numbers for the real data, with the
real index arithmetic, bounds checks, barriers, warp shuffles (the lanes of a warp exchange values
once all its live lanes have arrived), thread-block clusters (a cluster's blocks run together, each
with its own shared memory; TVM's cluster barrier and distributed shared memory builtins), the TF32
tensor-core mma (per warp, in PTX's fragment layout), asynchronous copies (`cp.async`: a copy
lands in shared memory only at the wait for its group) and launch sequence. What it does not: speed,
races the two orders do not expose, divergence within a warp. Sources with other inline PTX
(`asm`) or warp votes are declined (`EmulationUnsupported`). The GPU tests (`tests/test_gpu.py`)
remain the word on a real device; `tests/test_cuda_emulated.py` runs the CUDA algorithms here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tvm

from ..module_cache import cache_dir

PRELUDE = Path(__file__).with_name("prelude.h")
#: g++ flags: -O1 compiles TVM's unrolled kernels in about a second and runs them fast enough
CXXFLAGS = ["-std=c++20", "-O1", "-w", "-fno-strict-aliasing"]
#: what the emulator cannot run (inline PTX, warp votes, cooperative groups)
_UNSUPPORTED = re.compile(r"\b(?:__)?asm(?:__)?\s*(?:(?:__)?volatile(?:__)?\s*)?\(|__ballot|__any_sync|__all_sync|cooperative_groups")
#: what makes a kernel's threads wait for each other (they then run as fibers)
_COLLECTIVE = re.compile(r"__syncthreads|__shfl|__syncwarp|__activemask|tvm_builtin_cuda_cluster_sync|"
                         r"tvm_builtin_ptx_ld_shared__cluster|mma\.sync|\bptx_cp_async|tvm_builtin_ptx_cp_async")
#: TVM's device builtins written in PTX that the prelude defines in C++ (their definitions are removed)
_EMULATED_BUILTINS = ("tvm_builtin_cuda_cvta_generic_to_shared", "tvm_builtin_cuda_cluster_sync",
                      "tvm_builtin_ptx_mapa_u32_shared__cluster_u32", "tvm_builtin_ptx_ld_shared__cluster_f32",
                      "tvm_builtin_cluster_ctaid_x", "tvm_builtin_cluster_ctaid_y", "tvm_builtin_cluster_ctaid_z")
_BUILTIN_DEF = re.compile(r"__forceinline__ __device__ [\w ]+?\b(" + "|".join(_EMULATED_BUILTINS)
                          + r")\([^)]*\)\s*\{.*?\n\}\n", re.DOTALL)
#: TVM's inline PTX for the TF32 tensor-core mma (union-tf32), which the prelude computes per warp
_MMA_TF32 = re.compile(r'__asm__ __volatile__\(\s*"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32\.tf32\.f32"'
                       r'\s*"[^"]*"\s*:(.*?)\)\s*;', re.DOTALL)
_OPERAND = re.compile(r'"(=?[rf])"\(')
_C_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "int64_t", "int8": "int8_t",
            "uint8": "uint8_t", "int16": "int16_t", "uint32": "uint32_t", "bool": "bool"}


def _mma_call(m: re.Match) -> str:
    """`emu::mma_m16n8k8_tf32(d0..d3, a0..a3, b0, b1, c0..c3)` for one mma asm statement."""
    text, operands, at = m.group(1), [], 0
    while (found := _OPERAND.search(text, at)) is not None:
        depth, i = 1, found.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        operands.append((found.group(1), text[found.end():i - 1]))
        at = i
    kinds = "".join(k[-1] for k, _ in operands)
    if kinds != "ffff" + "rrrr" + "rr" + "ffff" or not all(k.startswith("=") for k, _ in operands[:4]):
        raise EmulationUnsupported(f"an mma statement with operands {[k for k, _ in operands]}")
    return "emu::mma_m16n8k8_tf32(" + ", ".join(e for _, e in operands) + ");"


#: TVM's cp.async helpers: a copy (`ptx_cp_async_*`: its address arithmetic, then one asm statement)
#: and the group builtins (commit, wait)
_CP_ASYNC_DEF = re.compile(r"__forceinline__ __device__ void (ptx_cp_async\w*)\(([^)]*)\) \{\n(.*?)\n"
                           r"  (?:__asm__ __volatile__|asm volatile)\((.*?)\);\n\}\n", re.DOTALL)
_CP_ASYNC_GROUP_DEF = re.compile(r"__forceinline__ __device__ void (tvm_builtin_ptx_cp_async\w*)\(\) \{\s*"
                                 r"asm volatile\(\"cp\.async\.(commit_group|wait_all|wait_group (\d+));\"[^;]*;\s*\}\n")


def _cp_async_copy(m: re.Match) -> str:
    """A `ptx_cp_async_*` helper as a call of the prelude's `emu::cp_async` (same address arithmetic)."""
    name, params, setup, asm = m.groups()
    size = re.search(r'"n"\((\d+)\)', asm)
    if not re.search(r"cp\.async\.c[ag]\.shared\.global \[%0\], \[%1\], %2;", asm) or size is None:
        raise EmulationUnsupported(f"a cp.async helper {name} of another form")
    if "predicate" not in params:
        call = f"emu::cp_async(dst_p, src_p, {size.group(1)}, true);"
    else:
        if "@p cp.async" not in asm:
            raise EmulationUnsupported(f"a cp.async helper {name} of another form")
        zero_fill = "@!p st.shared" in asm
        call = (f"if (predicate == 1) emu::cp_async(dst_p, src_p, {size.group(1)}, true);"
                + (f" else emu::cp_async(dst_p, nullptr, {size.group(1)}, false);" if zero_fill else ""))
    return f"inline void {name}({params}) {{\n{setup}\n  {call}\n}}\n"


def _cp_async_group(m: re.Match) -> str:
    name, what, pending = m.groups()
    body = {"commit_group": "emu::cp_async_commit();",
            "wait_all": "emu::cp_async_commit(); emu::cp_async_wait(0);"}.get(what, f"emu::cp_async_wait({pending});")
    return f"inline void {name}() {{ {body} }}\n"


def _emulable(source: str) -> str:
    """`source` with the PTX the prelude emulates replaced: TVM's cluster builtins' definitions
    removed (the prelude defines them), its cp.async helpers made calls of the prelude's
    asynchronous copies, and the TF32 mma statements made calls."""
    source = _CP_ASYNC_GROUP_DEF.sub(_cp_async_group, _CP_ASYNC_DEF.sub(_cp_async_copy, source))
    return _MMA_TF32.sub(_mma_call, _BUILTIN_DEF.sub("", source))


class EmulationUnsupported(Exception):
    """The generated CUDA uses something the emulator does not run (named in the message)."""


class EmulatedFault(RuntimeError):
    """The emulated kernels faulted (an access outside every array, most likely) or did not finish."""


@dataclasses.dataclass(frozen=True)
class HostBuffer:
    name: str
    shape: tuple[int, ...]
    dtype: str
    param: bool  # a parameter of the compiled function (else scratch that the host function allocates)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: str
    buffers: tuple[int, ...]  # host buffer of each kernel argument
    arg_types: tuple[str, ...]  # C pointer types of the kernel's arguments
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    dynamic_shared_bytes: int
    cluster: tuple[int, int, int] = (1, 1, 1)  # thread-block cluster dims (blocks that run together)


@dataclasses.dataclass(frozen=True)
class CudaProgram:
    """What a CUDA build of a TIR module runs: TVM's CUDA C source, the host function's buffers
    (its parameters first, in order) and its kernel launches, in order."""

    source: str
    buffers: tuple[HostBuffer, ...]
    launches: tuple[Launch, ...]


def _kernel_launches(host, kernels: dict) -> tuple[list[HostBuffer], list[Launch]]:
    """The host function's buffers (its parameters first) and its kernel launches, in order."""
    buffers = [HostBuffer(p.name, tuple(int(s) for s in p.ty.shape), str(p.ty.dtype), True) for p in host.params]
    roots: list[tuple[object, int]] = [(p, i) for i, p in enumerate(host.params)]  # buffer var -> host buffer
    launches: list[Launch] = []

    def root_of(var) -> int:
        for v, i in roots:
            if v.same_as(var):
                return i
        raise EmulationUnsupported(f"a kernel argument {var} is not a buffer of the host function")

    def data_root(expr) -> int:
        if not (isinstance(expr, tvm.ir.Call) and expr.op.name == "tirx.buffer_data"):
            raise EmulationUnsupported(f"kernel argument {expr} is not a buffer's data pointer")
        return root_of(expr.args[0])

    def walk(stmt) -> None:
        kind = type(stmt).__name__
        if kind == "SeqStmt":
            for s in stmt.seq:
                walk(s)
        elif kind == "DeclBuffer":
            if int(stmt.buffer.ty.elem_offset) != 0:
                raise EmulationUnsupported(f"buffer {stmt.buffer} is a view at an offset")
            roots.append((stmt.buffer, data_root(stmt.data)))
        elif kind == "AllocBuffer":
            buf = stmt.buffer
            buffers.append(HostBuffer(buf.name, tuple(int(s) for s in buf.ty.shape), str(buf.ty.dtype), False))
            roots.append((buf, len(buffers) - 1))
        elif kind == "AttrStmt":
            walk(stmt.body)
        elif kind == "Evaluate":
            call = stmt.value
            if isinstance(call, tvm.ir.Call) and call.op.name == "tirx.call_ffi_kernel":
                launches.append(_launch(call, kernels, data_root))
            elif not isinstance(call, tvm.ir.IntImm):
                raise EmulationUnsupported(f"host statement {call} is not a kernel launch")
        else:
            raise EmulationUnsupported(f"host code with a {kind} around its launches")

    walk(host.body)
    return buffers, launches


def _launch(call, kernels: dict, data_root) -> Launch:
    name = str(call.args[0].value)
    params = list(call.attrs.launch_params)
    extents = [int(a) for a in call.args[len(call.args) - len(params):]]
    args = call.args[1:len(call.args) - len(params)]
    dims = dict(zip(params, extents))
    dynamic = sum(v for k, v in dims.items() if "dyn_shared" in k)
    unknown = [k for k in params if not (k.startswith(("blockIdx.", "threadIdx.", "clusterCtaIdx.")) or "dyn_shared" in k)]
    if unknown:
        raise EmulationUnsupported(f"kernel {name} launches with {unknown}")
    func = kernels[name]
    types = []
    for p in func.params:
        ty = p.ty
        if not hasattr(ty, "element_type"):
            raise EmulationUnsupported(f"kernel {name} takes a scalar argument {p.name}")
        dtype = str(ty.element_type.dtype)
        if dtype not in _C_TYPES:
            raise EmulationUnsupported(f"kernel {name} takes {dtype} data")
        types.append(_C_TYPES[dtype] + "*")
    grid = tuple(dims.get(f"blockIdx.{a}", 1) for a in "xyz")
    block = tuple(dims.get(f"threadIdx.{a}", 1) for a in "xyz")
    cluster = tuple(dims.get(f"clusterCtaIdx.{a}", 1) for a in "xyz")
    if any(g % c for g, c in zip(grid, cluster)):
        raise EmulationUnsupported(f"kernel {name}: grid {grid} is not whole clusters of {cluster}")
    if np.prod(cluster) > 1 and np.prod(block) % 32:
        raise EmulationUnsupported(f"kernel {name}: clusters of blocks of {np.prod(block)} threads (not whole warps)")
    return Launch(name, tuple(data_root(a) for a in args), tuple(types), grid, block, dynamic, cluster)


_SHARED_DECL = re.compile(r"__shared__\s+(?:(?:alignas|__align__)\((\d+)\)\s+)?([\w:]+)\s+(\w+)(\[\d+\]);")
_DYN_SHARED_DECL = re.compile(r"extern\s+__shared__\s+(?:alignas\(\d+\)\s+|__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\[\];")


_KERNEL_DEF = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{')


def _collective_kernels(source: str) -> set[str]:
    """The kernels whose definition has a barrier or a warp shuffle (the others run without fibers)."""
    defs = list(_KERNEL_DEF.finditer(source))
    ends = [m.start() for m in defs[1:]] + [len(source)]
    return {m.group(1) for m, end in zip(defs, ends) if _COLLECTIVE.search(source, m.end(), end)}


def _translation_unit(program: CudaProgram) -> str:
    """One C++ translation unit: the prelude, the kernels, and a main() that reads the parameters
    from argv[1], runs the launches and writes the parameters to argv[2]."""
    source, buffers, launches = program.source, program.buffers, program.launches
    # a block's shared array: a place in its block's arena (NaN at each block's start)
    body = _SHARED_DECL.sub(lambda m: f"EMU_SHARED_ARRAY({m.group(2)}, {m.group(3)}, {m.group(4)}, "
                                      f"{m.group(1) or 16});", _emulable(source))
    body = _DYN_SHARED_DECL.sub(lambda m: f"EMU_DYNAMIC_SHARED({m.group(1)}, {m.group(2)});", body)
    lines = ['#include "prelude.h"', body, "int main(int argc, char** argv) {",
             "  if (argc < 3) { std::fprintf(stderr, \"usage: emu IN OUT [alternate]\\n\"); return 2; }",
             "  bool alternate = argc < 4 || argv[3][0] != '0';",
             "  FILE* in = std::fopen(argv[1], \"rb\");", "  if (!in) return 2;"]
    for i, b in enumerate(buffers):
        lines.append(f"  unsigned char* b{i} = (unsigned char*)emu::guarded({b.nbytes}, \"{b.name}\");")
        if b.param:
            lines.append(f"  if (std::fread(b{i}, 1, {b.nbytes}, in) != {b.nbytes}) return 2;")
        else:
            lines.append(f"  std::memset(b{i}, 0xff, {b.nbytes});")
    lines.append("  std::fclose(in);")
    collective = _collective_kernels(source)
    for la in launches:
        args = ", ".join(f"({t})b{i}" for t, i in zip(la.arg_types, la.buffers))
        grid, block, cluster = (", ".join(map(str, d)) for d in (la.grid, la.block, la.cluster))
        lines.append(f"  emu::launch(\"{la.kernel}\", dim3{{{grid}}}, dim3{{{block}}}, dim3{{{cluster}}}, "
                     f"{la.dynamic_shared_bytes}, "
                     f"{'true' if la.kernel in collective else 'false'}, alternate, [&] {{ {la.kernel}({args}); }});")
    lines.append("  FILE* out = std::fopen(argv[2], \"wb\");")
    for i, b in enumerate(buffers):
        if b.param:
            lines.append(f"  std::fwrite(b{i}, 1, {b.nbytes}, out);")
    lines += ["  std::fclose(out);", "  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _compile(program: str) -> Path:
    """The executable of a translation unit, from the cache when the same one was compiled before."""
    digest = hashlib.sha256((program + PRELUDE.read_text() + " ".join(CXXFLAGS)).encode()).hexdigest()[:24]
    exe = cache_dir() / "cuda_emulator" / f"emu-{digest}"
    if exe.exists():
        return exe
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise EmulationUnsupported("no C++ compiler (g++) on PATH")
    exe.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "emu.cpp"
        for header in ("cuda.h", "mma.h"):  # included by TVM's source; the prelude has what is used
            (Path(tmp) / header).write_text("// the emulator needs nothing of this header\n")
        shutil.copy(PRELUDE, Path(tmp) / "prelude.h")
        src.write_text(program)
        built = Path(tmp) / "emu"
        proc = subprocess.run([compiler, *CXXFLAGS, "-I", tmp, str(src), "-o", str(built)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise EmulationUnsupported(f"g++ did not compile the emulated kernels:\n{proc.stderr[-4000:]}")
        tmp_exe = exe.with_suffix(f".tmp{np.random.randint(1 << 30)}")
        shutil.copy(built, tmp_exe)
        tmp_exe.replace(exe)  # atomic: concurrent tests never run a half-written file
    return exe


class EmulatedModule:
    """A CUDA build of a TIR module, callable on numpy arrays like the compiled function."""

    def __init__(self, program: CudaProgram):
        unsupported = _UNSUPPORTED.search(_emulable(program.source))
        if unsupported:
            raise EmulationUnsupported(f"the CUDA source uses {unsupported.group(0)!r}")
        self.program = program
        self.params = [b for b in program.buffers if b.param]
        self.executable = _compile(_translation_unit(program))

    def __call__(self, *arrays: np.ndarray, alternate: bool = True, timeout: float = 600.0) -> None:
        """Run the kernels on `arrays` (the function's parameters, in order). What the kernels
        changed is written back into the arrays, as the compiled function writes its outputs."""
        if len(arrays) != len(self.params):
            raise TypeError(f"expected {len(self.params)} arrays ({', '.join(p.name for p in self.params)}), "
                            f"got {len(arrays)}")
        for a, p in zip(arrays, self.params):
            if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != np.dtype(p.dtype):
                got = f"{type(a).__name__} {getattr(a, 'shape', '')} {getattr(a, 'dtype', '')}"
                raise TypeError(f"argument {p.name}: expected a {p.dtype} array of shape {p.shape}, got {got}")
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
            with open(src, "wb") as f:
                for a in arrays:
                    f.write(np.ascontiguousarray(a).tobytes())
            try:
                proc = subprocess.run([str(self.executable), str(src), str(dst), "1" if alternate else "0"],
                                      capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise EmulatedFault(f"the emulated kernels did not finish in {timeout:.0f} s") from e
            if proc.returncode != 0:
                faults = [ln[len("emu: "):] for ln in proc.stderr.splitlines() if ln.startswith("emu: fault")]
                launched = [ln for ln in proc.stderr.splitlines() if ln.startswith("emu: launch")]
                where = launched[-1][len("emu: "):] if launched else "before the first launch"
                cause = faults[0] if faults else f"exit {proc.returncode}"
                raise EmulatedFault(f"the emulated kernels stopped ({cause}); last {where}")
            data = dst.read_bytes()
        offset = 0
        for a, p in zip(arrays, self.params):
            result = np.frombuffer(data, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
            offset += p.nbytes
            if not np.array_equal(result, a, equal_nan=a.dtype.kind == "f"):
                if not a.flags.writeable:
                    raise ValueError(f"the kernels wrote argument {p.name}, which is a read-only array")
                a[...] = result


def lower(mod: tvm.IRModule, target) -> CudaProgram:
    """Build `mod` for the CUDA `target` as `tir_build.compile_tir` does; what the build runs."""
    from ..tir_build import compile_tir

    captured = {}

    @tvm.instrument.pass_instrument
    class _BeforePackedAPI:
        def run_before_pass(self, m, info):
            if info.name == "tirx.MakePackedAPI":
                captured["mod"] = m

    ctx = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(opt_level=ctx.opt_level, config=dict(ctx.config),
                                   instruments=[*ctx.instruments, _BeforePackedAPI()]):
        executable = compile_tir(mod, target)
    cuda = [m for m in executable.mod.imports if m.kind == "cuda"]
    if not cuda or "mod" not in captured:
        raise EmulationUnsupported("the build produced no CUDA kernels")
    lowered = captured["mod"]
    kernels = {gv.name_hint: f for gv, f in lowered.functions.items()
               if f.attrs is not None and "tirx.is_global_func" in f.attrs}
    hosts = [f for gv, f in lowered.functions.items() if gv.name_hint not in kernels]
    if len(hosts) != 1:
        raise EmulationUnsupported(f"expected one host function, found {len(hosts)}")
    buffers, launches = _kernel_launches(hosts[0], kernels)
    return CudaProgram(cuda[0].inspect_source(), tuple(buffers), tuple(launches))


def emulate(mod: tvm.IRModule, target) -> EmulatedModule:
    """`mod` built for the CUDA `target`, runnable on the CPU (see the module docstring)."""
    return EmulatedModule(lower(mod, target))
