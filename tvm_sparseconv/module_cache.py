"""The on-disk cache of compiled modules: verified before loading, written atomically, built once.

Where: `$TVM_SPARSECONV_CACHE` (default `~/.cache/tvm_sparseconv`), one shared library per key
in `tvm-<version>/`, each with a sidecar `<name>.sha256` ("<hex digest> <size>") written after it.

- A shared library is verified (size and SHA-256 against its sidecar) before `load_module`: a
  truncated or garbage library faults inside `dlopen` (SIGBUS), where no `except` can help, so it
  must never reach it. A missing or mismatched sidecar or artifact is a cache miss: one
  `CacheWarning` names the file and what was wrong, and the module is rebuilt and replaced.
- A verified library is loaded from a private copy beside it (`_load_private_copy`): a file
  damaged in place later cannot fault a process that loaded it, and a rebuilt file is not
  mistaken for the one `dlopen` already holds under the same name.
- Writers export to a temporary file in the same folder and `os.replace` it (readers see the old
  file or the new one, never half of one); the sidecar follows the same way.
- A per-artifact lock (`<name>.lock`, `fcntl.flock`) is held while building and writing, so
  processes compiling the same layer at once build it once and all succeed; the others load it.
- An unwritable cache (read-only folder, no C compiler for `export_library`) is not an error: the
  module is built and used without being kept.
- A module that had to be checked on first use (`verification.py`) keeps the verdict beside it,
  `<name>.verdict.json`; a damaged verdict is no verdict (the module is checked again).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import tvm

from ._warnings import warn_user

log = logging.getLogger("tvm_sparseconv")
SIDECAR_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"
VERDICT_SUFFIX = ".verdict.json"


class CacheWarning(UserWarning):
    """A cached compiled module was damaged or unverifiable: it was rebuilt and replaced."""


def cache_dir() -> Path:
    """`$TVM_SPARSECONV_CACHE`, else `~/.cache/tvm_sparseconv`."""
    return Path(os.environ.get("TVM_SPARSECONV_CACHE", Path.home() / ".cache" / "tvm_sparseconv"))


def artifact_path(name: str) -> Path:
    """Where the shared library called `name` (without suffix) lives for this TVM version."""
    return cache_dir() / f"tvm-{tvm.__version__}" / f"{name}.so"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _digest(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def verify(path: Path) -> str | None:
    """None when `path` and its sidecar agree (a loadable artifact); else what is wrong.

    Raises FileNotFoundError when there is no artifact at all (a plain miss, not damage).
    """
    size = path.stat().st_size  # FileNotFoundError: a plain miss
    side = sidecar_path(path)
    try:
        text = side.read_text(encoding="ascii", errors="strict")
    except FileNotFoundError:
        return f"no checksum file {side.name}"
    except (OSError, UnicodeDecodeError) as e:
        return f"unreadable checksum file {side.name} ({e})"
    fields = text.split()
    if len(fields) != 2 or len(fields[0]) != 64 or not fields[1].isdigit():
        return f"damaged checksum file {side.name}"
    want_hex, want_size = fields[0].lower(), int(fields[1])
    if size == 0:
        return "empty file"
    if size != want_size:
        return f"size {size} bytes, its checksum file says {want_size}"
    have_hex, _ = _digest(path)
    if have_hex != want_hex:
        return "SHA-256 does not match its checksum file"
    return None


def _write_atomically(path: Path, write: Callable[[str], None], suffix: str) -> None:
    """`write(tmp)` a temporary file beside `path`, then rename it onto `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def store(executable, path: Path) -> bool:
    """Export `executable` to `path` and write its sidecar, each atomically. False if not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, executable.export_library, ".so")
        hex_digest, size = _digest(path)
        if size == 0:
            raise OSError("export_library wrote an empty file")

        def write_sidecar(tmp: str) -> None:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{hex_digest} {size}\n")
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared cache

        _write_atomically(sidecar_path(path), write_sidecar, SIDECAR_SUFFIX)
        return True
    except Exception as e:  # noqa: BLE001 - no compiler or no writable cache: just not kept
        log.info("not caching the compiled module on disk (%s)", e)
        return False


@contextmanager
def _artifact_lock(path: Path) -> Iterator[None]:
    """Excludes other processes (and threads) building the same artifact; a no-op if unlockable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + LOCK_SUFFIX), "a")
    except OSError as e:  # read-only cache: build without the lock (and without keeping it)
        log.info("no lock for %s (%s)", path, e)
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _try_load(path: Path) -> tuple[tvm.runtime.Module | None, str | None]:
    """(module, None) for a verified, loadable artifact; (None, problem) otherwise; (None, None)
    when there is no artifact."""
    try:
        problem = verify(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"unreadable ({e})"
    if problem is not None:
        return None, problem
    try:
        return _load_private_copy(path), None
    except Exception as e:  # noqa: BLE001 - e.g. built against another runtime: rebuild
        return None, f"verified but not loadable ({e})"


def load_or_build(path: Path, build: Callable[[], object], function: str) -> tuple[tvm.runtime.Module, bool]:
    """(module, from_disk): the verified module at `path`, else `build()` (an executable with
    `.mod` and `export_library`) stored there. `function` must be in a loaded module."""
    module, problem = _try_load(path)
    if module is not None and _has(module, function):
        return module, True
    with _artifact_lock(path):
        # Another process may have written it while we waited, or be mid-way (artifact replaced,
        # sidecar not yet): look again under the lock before calling anything damage.
        module, problem = _try_load(path)
        if module is not None and not _has(module, function):
            module, problem = None, f"loaded but has no function {function!r}"
        if module is not None:
            return module, True
        if problem is not None:
            warn_user(f"damaged compiled-module cache file {path}: {problem}; rebuilding it", CacheWarning)
        executable = build()
        if store(executable, path):
            # the stored shared library, not the built module: an LLVM module in memory generates
            # its machine code again on first lookup (JIT), which export_library has just done
            # (cpu-register-reuse conv3 1x1 reduce, znver5: 3.4 s of 12.8)
            module, _ = _try_load(path)
            if module is not None and _has(module, function):
                return module, False
        return executable.mod, False


_LOADS = itertools.count()


def _load_private_copy(path: Path) -> tvm.runtime.Module:
    """Load the library at `path` from a private copy beside it (or, where the folder is not
    writable, from `path` itself): `dlopen` hands back the handle of a library this process already
    opened under the same name, even when the file has been replaced since (a rebuilt artifact would
    load as the old one); and a module mapped from the cache file itself faults (SIGBUS) when that
    file is later damaged in place."""
    copy = path.with_name(f".{path.name}.{os.getpid()}.{next(_LOADS)}.so")
    try:
        shutil.copyfile(path, copy)
    except OSError:  # a read-only cache
        return tvm.runtime.load_module(str(path))
    try:
        return tvm.runtime.load_module(str(copy))
    finally:
        try:
            os.unlink(copy)  # the loaded mapping keeps the copy's data
        except OSError:
            pass


def _has(module: tvm.runtime.Module, function: str) -> bool:
    try:
        module[function]
        return True
    except Exception:  # noqa: BLE001
        return False


def verdict_path(path: Path) -> Path:
    return path.with_name(path.name + VERDICT_SUFFIX)


def read_verdict(path: Path) -> dict | None:
    """The verdict stored beside the artifact `path` (a dict with a bool "ok"), None without a
    readable one."""
    try:
        verdict = json.loads(verdict_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return verdict if isinstance(verdict, dict) and isinstance(verdict.get("ok"), bool) else None


def write_verdict(path: Path, verdict: dict) -> bool:
    """Store `verdict` beside the artifact `path`, atomically. False if it could not be kept."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(verdict, f, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(verdict_path(path), write, ".json")
        return True
    except OSError as e:  # a read-only cache: checked again in the next process
        log.info("not keeping the verification verdict of %s (%s)", path, e)
        return False
