"""Build the TensorFlow op library (`tvm_sparseconv_tf.cc`) once per TensorFlow, TVM and source.

Where: `$TVM_SPARSECONV_TF_OP_DIR`, default `<cache_dir()>/tf_op` (`$TVM_SPARSECONV_CACHE`, else
`~/.cache/tvm_sparseconv`), as `tvm_sparseconv_tf-<key>.so`; the key hashes the C++ source, the
TensorFlow version and its compile/link flags, the tvm-ffi and TVM runtime libraries it links, and
the compiler. The same conventions as the module cache (`module_cache.py`): the library is compiled
to a temporary name and renamed, its SHA-256 sidecar is written after it and checked before it is
loaded (a truncated library would kill the process inside `dlopen`), and a lock file makes
processes that build at once build it once.

Compiler: `$CXX`, else `c++`, `g++`, `clang++` (the first found), with TensorFlow's own flags
(`tf.sysconfig`), which fix the C++ ABI (`_GLIBCXX_USE_CXX11_ABI`) to TensorFlow's; TVM is only
called through tvm-ffi's C API, so no C++ type crosses between TensorFlow's and TVM's builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from .. import module_cache

log = logging.getLogger("tvm_sparseconv")
SOURCE = Path(__file__).with_name("tvm_sparseconv_tf.cc")
NAME = "tvm_sparseconv_tf"
COMPILERS = ("c++", "g++", "clang++")
INSTALL_HINT = ("install a C++ compiler (Debian/Ubuntu: `apt-get install g++`; Fedora/RHEL: `dnf install "
                "gcc-c++`; macOS: `xcode-select --install`) or point $CXX at one")


class OpLibraryError(RuntimeError):
    """The TensorFlow op library could not be built or loaded (the message says why and what to do)."""


def library_dir() -> Path:
    """`$TVM_SPARSECONV_TF_OP_DIR`, else `<module cache>/tf_op`."""
    env = os.environ.get("TVM_SPARSECONV_TF_OP_DIR")
    return Path(env) if env else module_cache.cache_dir() / "tf_op"


def find_compiler() -> str:
    """The C++ compiler to use (absolute path); OpLibraryError naming what to install if none."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else list(COMPILERS)
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise OpLibraryError(f"no C++ compiler found (looked for {', '.join(candidates)}) to build tvm_sparseconv's "
                         f"TensorFlow op: {INSTALL_HINT}")


def _tvm_libraries() -> dict[str, Path]:
    """tvm-ffi's headers and library, and TVM's runtime libraries, from the installed wheels."""
    import tvm
    import tvm_ffi

    ffi_root = Path(tvm_ffi.__file__).resolve().parent
    tvm_lib = Path(tvm.__file__).resolve().parent / "lib"
    found = {"ffi_include": ffi_root / "include", "ffi_lib": ffi_root / "lib" / "libtvm_ffi.so",
             "runtime": tvm_lib / "libtvm_runtime.so", "runtime_cuda": tvm_lib / "libtvm_runtime_cuda.so"}
    for key in ("ffi_include", "ffi_lib", "runtime"):
        if not found[key].exists():
            raise OpLibraryError(f"tvm-ffi/TVM install has no {found[key]} (needed to build the TensorFlow op)")
    return found


@lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def gpu_defines(gpu: bool) -> list[str]:
    """The defines that compile the GPU kernel in (and load TVM's CUDA runtime by path for it)."""
    if not gpu:
        return []
    cuda = _tvm_libraries()["runtime_cuda"]
    return ["-DTSC_TF_OP_GPU"] + ([f'-DTSC_TVM_RUNTIME_CUDA="{cuda}"'] if cuda.exists() else [])


def compile_flags() -> list[str]:
    """TensorFlow's compile flags and tvm-ffi's headers (no defines)."""
    import tensorflow as tf

    return ["-fPIC", "-w", *tf.sysconfig.get_compile_flags(), f"-I{_tvm_libraries()['ffi_include']}"]


def build_command(output: Path) -> tuple[list[str], dict]:
    """(the compiler command that writes `output`, what identifies the build). The GPU kernel is
    compiled in when TensorFlow is built with CUDA."""
    import tensorflow as tf

    cxx = find_compiler()
    libs = _tvm_libraries()
    defines = gpu_defines(bool(tf.test.is_built_with_cuda()))
    cflags = compile_flags()
    lflags = list(tf.sysconfig.get_link_flags())
    rpath = f"-Wl,-rpath,{libs['ffi_lib'].parent}:{libs['runtime'].parent}"
    cmd = [cxx, "-O2", "-shared", *cflags, *defines,
           str(SOURCE), "-o", str(output), *lflags,
           # libtvm_runtime is linked although nothing calls it directly: loading it registers
           # the CPU thread pool and workspace functions that compiled modules call.
           "-Wl,--no-as-needed", str(libs["ffi_lib"]), str(libs["runtime"]), "-Wl,--as-needed", rpath]
    identity = {"source": hashlib.sha256(SOURCE.read_bytes()).hexdigest(), "tensorflow": tf.__version__,
                "cflags": cflags, "lflags": lflags, "defines": defines, "compiler": _compiler_version(cxx),
                "libs": {k: str(v) for k, v in libs.items()}}
    return cmd, identity


def library_path() -> Path:
    """Where the op library for this TensorFlow, TVM and source lives (built or not)."""
    _, identity = build_command(Path("out.so"))
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return library_dir() / f"{NAME}-{key}.so"


def build(force: bool = False) -> Path:
    """The op library's path, compiled first if it is not there (or `force`). OpLibraryError if it
    cannot be built, with the compiler's output."""
    path = library_path()
    if not force and _verified(path):
        return path
    with module_cache._artifact_lock(path):  # noqa: SLF001 - the project's one lock convention
        if not force and _verified(path):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            cmd, _ = build_command(Path(tmp))
            log.info("building tvm_sparseconv's TensorFlow op: %s", " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OpLibraryError(f"compiling tvm_sparseconv's TensorFlow op failed ({cmd[0]} exit "
                                     f"{proc.returncode}):\n{proc.stderr[-4000:]}\ncommand: {' '.join(cmd)}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        digest, size = module_cache._digest(path)  # noqa: SLF001

        def write_sidecar(tmp_side: str) -> None:
            with open(tmp_side, "w", encoding="ascii") as f:
                f.write(f"{digest} {size}\n")
            os.chmod(tmp_side, 0o644)

        module_cache._write_atomically(module_cache.sidecar_path(path), write_sidecar,  # noqa: SLF001
                                       module_cache.SIDECAR_SUFFIX)
    return path


def _verified(path: Path) -> bool:
    try:
        problem = module_cache.verify(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        problem = str(e)
    if problem is not None:
        log.warning("rebuilding the TensorFlow op library %s: %s", path, problem)
        return False
    return True
