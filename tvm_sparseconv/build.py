"""Turn a workload into a runnable TVM function: pick the schedule, compile, cache on disk.

Schedule: the tuning record for this workload and device when `tuning_logs/` has one, else the
untuned default template of `schedules/` (with a one-line warning naming the tune command).
Disk cache: `$TVM_SPARSECONV_CACHE` (default `~/.cache/tvm_sparseconv`), one shared library per
(TVM version, target, workload, schedule); a changed record or template gives a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.target import Target

from . import tuning_records
from ._warnings import warn_user
from .schedules import default_rule
from .workload import ConvWorkload

FUNC_NAME = "sparse_conv2d"
log = logging.getLogger("tvm_sparseconv")


class UntunedWarning(UserWarning):
    """No tuning record for this workload and device: the untuned template is used."""


@dataclass(frozen=True)
class BuildResult:
    function: tvm.runtime.Function
    module: tvm.runtime.Module
    schedule_source: str  # "tuned:<rule>@<folder>" or "untuned:<rule>"
    cache_path: Path | None
    from_disk_cache: bool

    @property
    def tuned(self) -> bool:
        return self.schedule_source.startswith("tuned")


def cache_dir() -> Path:
    return Path(os.environ.get("TVM_SPARSECONV_CACHE", Path.home() / ".cache" / "tvm_sparseconv"))


def tune_command(wl: ConvWorkload, target: Target) -> str:
    """The `scripts/tune.py` call that tunes this workload on its real kernel (saved to a file)."""
    kind = "cuda" if target.kind.name == "cuda" else "llvm"
    (t, b), (l, r) = wl.pads
    pair = lambda p: f"{p[0]},{p[1]}"  # noqa: E731
    cmd = (f"kernel.save('kernel.npz'); python scripts/tune.py --target {kind} --kernel kernel.npz "
           f"--input-shape {','.join(map(str, wl.input_shape))} --strides {pair(wl.strides)} "
           f"--dilations {pair(wl.dilations)} --padding {t},{b},{l},{r}")
    if wl.has_bias:
        cmd += " --bias"
    if wl.activation:
        cmd += f" --activation {wl.activation}"
    return cmd


def choose_schedule(wl: ConvWorkload, target: Target):
    """(schedule, source) for `wl`: tuned record if any, else the default template, untuned."""
    tuned = tuning_records.find_tuned_schedule(wl, target)
    if tuned is not None:
        return tuned.schedule, f"tuned:{tuned.rule}@{tuned.folder.name}"
    rule = default_rule(target)
    sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
    if sch is None:
        raise RuntimeError(f"schedule rule {rule.name} does not apply to {wl.describe()}")
    warn_user(
        f"no tuning record for {wl.describe()} on {target.kind.name}: using the untuned "
        f"'{rule.name}' template; tune it with: {tune_command(wl, target)}",
        UntunedWarning,
    )
    return sch, f"untuned:{rule.name}"


def _cache_key(wl: ConvWorkload, target: Target, schedule) -> str:
    blob = json.dumps(
        {
            "tvm": tvm.__version__,
            "target": str(target),
            "host": str(target.host) if target.host else None,
            "workload": wl.to_json(),
            "trace": str(schedule.trace),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build(wl: ConvWorkload, target: Target, use_disk_cache: bool = True) -> BuildResult:
    """Compile `wl` for `target` (or load it from the disk cache)."""
    schedule, source = choose_schedule(wl, target)
    path = cache_dir() / f"tvm-{tvm.__version__}" / f"{wl.key()}-{_cache_key(wl, target, schedule)}.so"
    if use_disk_cache and path.is_file():
        try:
            module = tvm.runtime.load_module(str(path))
            return BuildResult(module[FUNC_NAME], module, source, path, True)
        except Exception as e:  # noqa: BLE001 - a broken cache file is rebuilt, not fatal
            log.warning("ignoring unreadable cached module %s (%s)", path, e)

    executable = tvm.compile(schedule.mod, target=target)
    module = executable.mod
    if use_disk_cache:
        _store(executable, path)
    return BuildResult(module[FUNC_NAME], module, source, path if use_disk_cache else None, False)


def _store(executable, path: Path) -> None:
    """Export atomically; without a C compiler or a writable cache the build is simply not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        executable.export_library(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001
        log.info("not caching the compiled module on disk (%s)", e)
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except Exception:  # noqa: BLE001
            pass
