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

Code that TVM and LLVM need not see (register-reuse's straight-line FMAs) can be left out of the
TIR and spliced into the PTX as text at markers (`ptx_marker`, `with_splices`, `splice`).

Long code can be compiled in pieces in child processes and made one kernel
(`compile_nvptx_pieces`): joined into one PTX module (`join_pieces`: as fast as the single kernel),
or, for code too long for ptxas to compile whole in time, linked from objects compiled apart
(`piece_source`, `dispatcher_source`, `link`).
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


# --- PTX text spliced into LLVM's output (code TVM and LLVM need not see) ---------------------------
#: ids of `ptx_marker`s start here: a real `bar.sync` takes ids 0-15, so none is taken for a marker
MARKER_BASE = 1 << 16
#: the PrimFunc attribute holding a kernel's splices (`with_splices`)
SPLICES_ATTR = "tvm_sparseconv.ptx_splices"
#: in a snippet: the marker's operand (a register or an immediate); in a prologue: the module's
#: shared array
VALUE, SHARED = "%VALUE", "%SHARED"
_MARKER_LINE = re.compile(r"^\s*(?:bar\.sync|barrier\.sync(?:\.aligned)?)\s+(\d+),\s*([%\w-]+);\s*$")
_SHARED_DECL = re.compile(r"^\.visible \.shared \.align \d+ \.b8 (\w+)\[(\d+)\];$", re.M)


def ptx_marker(index: int, value: tirx.PrimExpr) -> tirx.Stmt:
    """A place in a kernel where `splice` puts snippet `index`, which may read `value` (int32).

    An LLVM barrier call with an id no barrier has: LLVM keeps it, in order with the memory
    accesses and barriers around it, and prints it as ``bar.sync <id>, <value>``. (TVM 0.27's LLVM
    codegen has no inline assembly.)"""
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.nvvm.barrier.cta.sync.aligned.count",
                                               tirx.const(MARKER_BASE + index, "int32"), value))


def with_splices(func: tirx.PrimFunc, snippets: list[str], prologue: str, shared_bytes: int,
                 cluster: tuple[int, int, int] | None = None) -> tirx.PrimFunc:
    """`func` carrying the PTX that `nvptx_ptx` splices in: `snippets[i]` at `ptx_marker(i, ...)`,
    `prologue` (register declarations, set-up) at the top of each kernel holding a marker; the
    module's one shared array must be `shared_bytes` long (snippets address it from its start).
    `cluster`: the kernels' thread-block cluster shape, fixed in the code (`cluster_directive`)."""
    spec = {"snippets": list(snippets), "prologue": prologue, "shared_bytes": int(shared_bytes)}
    if cluster is not None:
        spec["cluster"] = [int(c) for c in cluster]
    return func.with_attr(SPLICES_ATTR, spec)


def cluster_directive(cluster) -> str:
    """The PTX performance directive launching a kernel in clusters of `cluster` (x, y, z) blocks:
    a plain launch (cuLaunchKernel, as TVM's) then makes clusters; the grid must divide by it."""
    return ".reqnctapercluster " + ", ".join(str(int(c)) for c in cluster)


_CLUSTER_LINE = re.compile(r"^\.reqnctapercluster [\d, ]+$", re.M)


def _with_directive(ptx: str, entry: str, directive: str) -> str:
    """`ptx` with `directive` between each kernel `entry`*'s parameter list and its body."""
    lines, out, inside = ptx.split("\n"), [], False
    for line in lines:
        if re.match(rf"^\.visible \.entry {re.escape(entry)}\w*\(", line):
            inside = True
        elif inside and line == "{":
            out.append(directive)
            inside = False
        out.append(line)
    return "\n".join(out)


def splice(ptx: str, snippets: list[str], prologue: str, shared_bytes: int) -> str:
    """`ptx` with each marker replaced by its snippet (`ptx_marker`, `with_splices`). Refused if
    a marker is missing (its code would be lost) or a kernel holding markers does not use exactly
    one shared array of the size expected (one per kernel where a function launches several)."""
    arrays = {name: int(size) for name, size in _SHARED_DECL.findall(ptx)}
    out, seen = [], set()
    # where a function's prologue goes: after its body's opening brace and LLVM's declarations
    body_open, has_marker, in_decls = None, False, False
    for line in ptx.split("\n"):
        if in_decls and not (line.strip() == "" or line.lstrip().startswith(".reg")):
            body_open, in_decls = len(out), False
        m = _MARKER_LINE.match(line)
        if m and int(m.group(1)) >= MARKER_BASE:
            index = int(m.group(1)) - MARKER_BASE
            if index >= len(snippets):
                raise RuntimeError(f"splice: marker {index} has no snippet ({len(snippets)} given)")
            out.append(snippets[index].replace(VALUE, m.group(2)))
            seen.add(index)
            has_marker = True
            continue
        if line == "{" and body_open is None and not in_decls:
            in_decls = True
        elif line == "}" and body_open is not None:
            if has_marker:  # the prologue opens the function that holds markers
                text = "\n".join(out[body_open:])
                used = [a for a in arrays if re.search(rf"\b{a}\b", text)]
                if len(used) != 1 or arrays[used[0]] != shared_bytes:
                    raise RuntimeError(f"splice: a kernel with markers must use one shared array of {shared_bytes} "
                                       f"bytes; it uses {[(a, arrays[a]) for a in used]}")
                out.insert(body_open, prologue.replace(SHARED, used[0]))
            body_open, has_marker = None, False
        out.append(line)
    if len(seen) != len(snippets):
        missing = sorted(set(range(len(snippets))) - seen)
        raise RuntimeError(f"splice: {len(missing)} marker(s) not in the PTX (e.g. {missing[:5]})")
    return "\n".join(out)


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
    if SPLICES_ATTR in func.attrs:
        spec = func.attrs[SPLICES_ATTR]
        ptx = splice(ptx, [str(t) for t in spec["snippets"]], str(spec["prologue"]), int(spec["shared_bytes"]))
    # Every kernel of the function (one per launch: name_kernel, name_kernel_1, ...)
    marked, n = re.subn(rf"\.visible \.func ({re.escape(name + KERNEL_SUFFIX)}\w*)\(", r".visible .entry \1(", ptx)
    if n == 0 and f".entry {name + KERNEL_SUFFIX}" not in ptx:
        raise RuntimeError(f"no kernel {name + KERNEL_SUFFIX!r} in the NVPTX output")
    if SPLICES_ATTR in func.attrs and "cluster" in func.attrs[SPLICES_ATTR]:
        marked = _with_directive(marked, name + KERNEL_SUFFIX, cluster_directive(func.attrs[SPLICES_ATTR]["cluster"]))
    return marked


#: ptxas's optimisation level for the kernels built here (`assemble`)
PTXAS_OPT_LEVEL = 3


def assemble(ptx: str, arch: str = "sm_90", threads: int = 1, relocatable: bool = False,
             max_registers: int | None = None, kernel_registers: int | None = None,
             opt_level: int = PTXAS_OPT_LEVEL) -> bytes:
    """ptxas: PTX to a cubin for `arch` (`threads` > 1, or 0 for one per CPU: its functions
    compiled in parallel, `--split-compile`), or to a relocatable object for `link`, whose device
    functions use at most `max_registers` registers (ptxas gives a function compiled apart as many
    as it likes: 243 where the same code joined into its kernel got 122, halving the occupancy).
    `kernel_registers`: a cap on the kernels' registers (`-maxrregcount`: more blocks per SM, at
    the risk of spills); `opt_level`: ptxas's `-O`."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        src.write_text(ptx)
        split = [f"--split-compile={threads}"] if threads != 1 else []
        cap = [f"--device-function-maxrregcount={max_registers}"] if relocatable and max_registers else []
        if kernel_registers and not relocatable:
            cap.append(f"-maxrregcount={kernel_registers}")
        done = subprocess.run(["ptxas", f"-arch={arch}", f"-O{opt_level}", *split, *(["-c"] if relocatable else []), *cap,
                               "-o", str(out), str(src)],
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


def compile_nvptx(make: Callable[[bool], tirx.PrimFunc], arch: str = "sm_90", **ptxas) -> tvm.runtime.Executable:
    """Build the kernel `make(llvm=True)` through NVPTX + ptxas into a CUDA module whose host side
    comes from `make(llvm=False)` (the same function with TVM's CUDA barrier). `ptxas`: options of
    `assemble` (`kernel_registers`, `opt_level`); its kernels are compiled in parallel."""
    return build_with_cubin(make(False), assemble(nvptx_ptx(make(True), arch), arch, threads=0, **ptxas), arch)


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


def _piece(ptx: str, kernel: str, index: int) -> dict:
    """A piece's PTX module, parsed: its kernel `kernel` as the device function
    `kernel`_piece`index` ("function", same parameters, "params" their types), its "header",
    "shared" arrays and "helpers" (LLVM's half-float conversions: .weak functions)."""
    header, shared, functions = _top_level(ptx)
    mains = [text for name, text in functions if name == kernel]
    others = [name for name, text in functions if name != kernel and ".entry" in text.split("(")[0]]
    if len(mains) != 1 or others:
        raise RuntimeError(f"piece {index}: expected one kernel {kernel!r}, found {[n for n, _ in functions]}")
    name = f"{kernel}_piece{index}"
    text = re.sub(rf"\b{kernel}\b", name, mains[0].replace(kernel + "_param_", name + "_param_"))
    # a kernel's cluster shape is the dispatching kernel's (a device function has none)
    directives = _CLUSTER_LINE.findall(text)
    return {"header": header, "shared": shared, "helpers": {n: t for n, t in functions if n != kernel},
            "function": re.sub(r"^\.visible \.entry ", ".func ", _CLUSTER_LINE.sub("", text)),
            "params": re.findall(rf"\.param (\.\w+) {name}_param_\d+", text), "directives": directives}


def _same_params(pieces: list[dict]) -> list[str]:
    for i, piece in enumerate(pieces):
        if piece["params"] != pieces[0]["params"]:
            raise RuntimeError(f"piece {i}: parameters {piece['params']} differ from piece 0's {pieces[0]['params']}")
        if piece["directives"] != pieces[0]["directives"]:
            raise RuntimeError(f"piece {i}: cluster shape {piece['directives']} differs from piece 0's "
                               f"{pieces[0]['directives']}")
    return pieces[0]["params"]


def _dispatcher(kernel: str, params: list[str], n_pieces: int, directives: list[str] = ()) -> str:
    """The kernel `kernel` that calls `kernel`_piece0.. in turn with its own parameters (`call.uni`:
    every piece must be block-uniform in what it skips, as `emit`'s guarded pieces are), launched
    with the pieces' `directives` (their cluster shape)."""
    regs = "\n".join(f"\t.reg {t} \t%p{k};\n\tld.param{t} \t%p{k}, [{kernel}_param_{k}];" for k, t in enumerate(params))
    decls = "\n".join(f"\t.param {t} a{k};\n\tst.param{t} \t[a{k}], %p{k};" for k, t in enumerate(params))
    args = ", ".join(f"a{k}" for k in range(len(params)))
    calls = "\n".join(f"\t{{\n{decls}\n\tcall.uni {kernel}_piece{i}, ({args});\n\t}}" for i in range(n_pieces))
    return (f".visible .entry {kernel}(\n" + ",\n".join(f"\t.param {t} {kernel}_param_{k}" for k, t in enumerate(params))
            + "\n)\n" + "".join(d + "\n" for d in directives) + f"{{\n{regs}\n{calls}\n\tret;\n}}")


def _tail_functions(tail: str, kernel: str, shared: dict, skip: dict) -> tuple[list[str], dict]:
    """`tail`'s kernel `kernel` renamed `kernel`_1, with its other functions not in `skip`; and its
    shared arrays (refused where a name is also in `shared`)."""
    _, tail_shared, functions = _top_level(tail)
    if set(tail_shared) & set(shared):
        raise RuntimeError(f"the tail's shared arrays {sorted(tail_shared)} would collide with the pieces'")
    texts = [re.sub(rf"\b{kernel}(_param_\d+)?\b", lambda m: f"{kernel}_1{m.group(1) or ''}", text) if name == kernel
             else text for name, text in functions if name == kernel or name not in skip]
    return texts, tail_shared


def _shared_decls(shared: dict, storage: str = ".visible") -> list[str]:
    return [f"{storage} .shared .align {a} .b8 {n}[{s}];" for n, (a, s) in shared.items()]


def join_pieces(pieces: list[str], kernel: str, tail: str | None = None) -> str:
    """One PTX module whose kernel `kernel` runs each piece's kernel `kernel` in turn (as device
    functions, `_dispatcher`), and (if given) `tail`'s kernel `kernel` as `kernel`_1. The pieces'
    shared arrays of one name become one array of the largest size (the pieces run one after the
    other); helper functions that several pieces carry are kept once."""
    parsed = [_piece(ptx, kernel, i) for i, ptx in enumerate(pieces)]
    params, shared, helpers = _same_params(parsed), {}, {}
    for piece in parsed:
        for name, (align, size) in piece["shared"].items():
            old = shared.get(name, (0, 0))
            shared[name] = (max(align, old[0]), max(size, old[1]))
        helpers.update(piece["helpers"])
    out = list(parsed[0]["header"]) + _shared_decls(shared) + list(helpers.values())
    out += [piece["function"] for piece in parsed] + [_dispatcher(kernel, params, len(parsed), parsed[0]["directives"])]
    if tail is not None:
        texts, tail_shared = _tail_functions(tail, kernel, shared, helpers)
        out[len(parsed[0]["header"]):len(parsed[0]["header"])] = _shared_decls(tail_shared)
        out += texts
    return "\n\n".join(out) + "\n"


def piece_source(ptx: str, kernel: str, index: int) -> tuple[str, dict]:
    """Piece `index` as a PTX module of its own for separate compilation (`ptxas -c`): its kernel
    becomes the visible device function `kernel`_piece`index`, its shared arrays `.extern` (defined
    by `dispatcher_source`), its helpers kept (.weak); and its parsed parts (`_piece`)."""
    piece = _piece(ptx, kernel, index)
    text = piece["header"] + _shared_decls(piece["shared"], ".extern")
    source = "\n".join(text) + "\n\n" + "\n\n".join([*piece["helpers"].values(), ".visible " + piece["function"]]) + "\n"
    return source, {k: piece[k] for k in ("header", "shared", "params", "directives")}


def dispatcher_source(pieces: list[dict], kernel: str, tail: str | None = None) -> str:
    """The PTX module linked with the pieces' objects (`piece_source`'s parts as `pieces`): the
    kernel `kernel` that calls them in turn (`_dispatcher`), the shared arrays they declare (nvlink
    needs one size per name: they share them, running one after the other), and (if given)
    `tail`'s kernel `kernel` as `kernel`_1."""
    params, shared = _same_params(pieces), pieces[0]["shared"]
    for i, piece in enumerate(pieces):
        if piece["shared"] != shared:
            raise RuntimeError(f"piece {i}: shared arrays {piece['shared']} differ from piece 0's {shared}")
    sig = ", ".join(f".param {t} p{k}" for k, t in enumerate(params))
    out = list(pieces[0]["header"]) + _shared_decls(shared)
    out += [f".extern .func {kernel}_piece{i}({sig});" for i in range(len(pieces))]
    out.append(_dispatcher(kernel, params, len(pieces), pieces[0]["directives"]))
    if tail is not None:
        texts, tail_shared = _tail_functions(tail, kernel, shared, {})
        out[len(pieces[0]["header"]):len(pieces[0]["header"])] = _shared_decls(tail_shared)
        out += texts
    return "\n\n".join(out) + "\n"


def link(objects: list[bytes], arch: str = "sm_90") -> bytes:
    """nvlink: relocatable device objects (`assemble(..., relocatable=True)`) into one cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, obj in enumerate(objects):
            paths.append(Path(tmp, f"o{i}.o"))
            paths[-1].write_bytes(obj)
        done = subprocess.run(["nvlink", f"-arch={arch}", "-o", str(Path(tmp, "k.cubin")), *map(str, paths)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"nvlink failed: {done.stderr.strip()[-2000:]}")
        return Path(tmp, "k.cubin").read_bytes()


def compile_tasks(tasks: list, kernel: str, arch: str, max_registers: int | None = None) -> list:
    """In this process, per task (recipe, piece index or None): with an index, the piece's (meta,
    relocatable object) through NVPTX then `ptxas -c` (`piece_source`, at most `max_registers`);
    else its PTX."""
    out = []
    for recipe, index in tasks:
        ptx = nvptx_ptx(recipe(), arch)
        if index is None:
            out.append(ptx)
        else:
            source, meta = piece_source(ptx, kernel, index)
            out.append((meta, assemble(source, arch, relocatable=True, max_registers=max_registers)))
    return out


def _tasks_in_processes(tasks: list, kernel: str, arch: str, workers: int, max_registers: int | None = None,
                        meanwhile: Callable | None = None) -> tuple[list, object]:
    """(`compile_tasks` of `tasks` in `workers` child interpreters (`python -m
    tvm_sparseconv.nvptx_worker`: no re-import of the caller's main module, unlike multiprocessing's
    spawn), each taking the next task not yet taken; `meanwhile()`, run here while they work)."""
    import pickle
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp, "job.pkl")
        job.write_bytes(pickle.dumps((tasks, kernel, arch, max_registers)))
        procs = [subprocess.Popen([sys.executable, "-m", "tvm_sparseconv.nvptx_worker", str(job)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
        try:
            extra = meanwhile() if meanwhile is not None else None
        finally:
            # every child is waited for before a failure is raised: none outlives the folder it writes to
            errors = [err for proc in procs for _, err in [proc.communicate()] if proc.returncode]
        if errors:
            raise RuntimeError(f"compiling pieces in a child process failed: {errors[0].strip()[-2000:]}")
        missing = [i for i in range(len(tasks)) if not Path(f"{job}.{i}.out").is_file()]
        if missing:
            raise RuntimeError(f"compiling pieces: no result for task(s) {missing} from the child processes")
        out = [pickle.loads(Path(f"{job}.{i}.out").read_bytes()) for i in range(len(tasks))]
    return out, extra


def compile_nvptx_pieces(make_host: Callable[[], tirx.PrimFunc], symbol: str, pieces: list, tail=None,
                         arch: str = "sm_90", workers: int | None = None, link_apart: bool = False,
                         max_registers: int | None = None, **ptxas) -> tvm.runtime.Executable:
    """Like `compile_nvptx`, for code too long to compile fast as one function: each of `pieces`
    (picklable callables returning a PrimFunc with one kernel, e.g. `functools.partial(emit, ...,
    piece=("part", i, n))`) goes through NVPTX apart, `workers` at a time in child processes
    (default: `$TVM_SPARSECONV_COMPILE_WORKERS`, else one per CPU); then one kernel runs them in turn:

    - joined (default): the pieces' kernels become device functions of one PTX module
      (`join_pieces`) that ptxas compiles whole; it inlines them, so the kernel is as fast as one
      long kernel, but its time grows faster than the code (conv5 1x1 expand, 104,858 FMAs in 7
      pieces, 2 cores: 28.7 s of ptxas);
    - `link_apart`: each piece its own relocatable object (`piece_source`; `ptxas -c` in the child
      that compiled it, its functions at most `max_registers` registers if given), linked by
      nvlink with a kernel that calls them (`dispatcher_source`): 4.9 s of ptxas there, but the
      calls cost at run time (H200: conv5 1x1 reduce_first b32 81.7 -> 142.8 us with g32p32x8G,
      conv4 1x1 reduce b1 10.3 -> 13.6; benchmarks/experiments/register_reuse-v12-pieces-*.json):
      ptxas gives a function compiled apart up to twice the joined kernel's registers, and the
      call ABI passes the memory descriptor in registers (two R2UR before each global load). A
      register cap recovers part of it on some tiles and loses on others (`register_reuse.LINK_MODES`).

    `tail`: the recipe of the function's second kernel. `make_host()`: the whole function `symbol`'s
    host side (one launch of the pieces' kernel, then the tail's), made while the children work.
    `ptxas`: options of `assemble` for the joined module or the linked dispatcher
    (`kernel_registers`, `opt_level`)."""
    name = symbol + KERNEL_SUFFIX
    tasks = [(r, i if link_apart else None) for i, r in enumerate(pieces)] + ([(tail, None)] if tail is not None else [])
    workers = workers or int(os.environ.get(WORKERS_ENV, 0)) or os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        host, done = make_host(), compile_tasks(tasks, name, arch, max_registers)
    else:
        done, host = _tasks_in_processes(tasks, name, arch, workers, max_registers, meanwhile=make_host)
    if str(host.attrs["global_symbol"]) + KERNEL_SUFFIX != name:
        raise RuntimeError(f"the host side's kernel is {host.attrs['global_symbol']}{KERNEL_SUFFIX}, not {name}")
    compiled, tail_ptx = done[:len(pieces)], (done[-1] if tail is not None else None)
    if not link_apart:
        return build_with_cubin(host, assemble(join_pieces(compiled, name, tail_ptx), arch, threads=0, **ptxas), arch)
    dispatcher = dispatcher_source([meta for meta, _ in compiled], name, tail_ptx)
    cubin = link([obj for _, obj in compiled] + [assemble(dispatcher, arch, relocatable=True, **ptxas)], arch)
    return build_with_cubin(host, cubin, arch)
