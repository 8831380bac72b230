"""Turn a workload into a runnable TVM function: pick the schedule, compile, cache on disk.

Algorithm and schedule: of the layer's workloads under each algorithm that runs on the target, the
one whose tuning record for this device (`tuning_logs/`) is fastest; with no record for any, the
untuned template (`schedules/`) of `algorithms.untuned_default`, with a one-line warning naming
the tune command.
Disk cache (`module_cache.py`): `$TVM_SPARSECONV_CACHE` (default `~/.cache/tvm_sparseconv`), one
shared library per (TVM version, target, workload, schedule), verified against its checksum before
it is loaded; a changed record or template gives a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import tvm
from tvm.target import Target

from . import algorithms, module_cache, tuning_records
from ._warnings import warn_user
from .module_cache import cache_dir  # noqa: F401 - part of this module's API before module_cache
from .schedules import default_rule
from .workload import ConvWorkload

FUNC_NAME = algorithms.FUNC_NAME
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
    workload: ConvWorkload  # the chosen algorithm's

    @property
    def tuned(self) -> bool:
        return self.schedule_source.startswith("tuned")


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


def choose_schedule(candidates: Sequence[ConvWorkload], target: Target):
    """(workload, schedule, source): the fastest tuned record among `candidates` (the layer under
    each algorithm), else the template of `algorithms.untuned_default` (or the first candidate's)."""
    found = []
    for wl in candidates:
        try:
            tuned = tuning_records.find_tuned_schedule(wl, target)
        except Exception as e:  # noqa: BLE001 - logs are read defensively; anything left is not fatal
            warn_user(f"could not read the tuning logs for {wl.describe()} ({type(e).__name__}: {e}); "
                      "ignoring them", tuning_records.TuningLogWarning)
            tuned = None
        if tuned is not None:
            found.append((tuned.run_us if tuned.run_us is not None else float("inf"), wl, tuned))
    if found:
        _, wl, tuned = min(found, key=lambda f: f[0])
        return wl, tuned.schedule, f"tuned:{tuned.rule}@{tuned.folder.name}"
    preferred = (algorithms.untuned_default(candidates[0], target.kind.name), algorithms.DEFAULT)
    wl = next((w for name in preferred for w in candidates if w.algorithm == name), candidates[0])
    rule = default_rule(target, wl.algorithm)
    sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
    if sch is None:
        raise RuntimeError(f"schedule rule {rule.name} does not apply to {wl.describe()}")
    warn_user(
        f"no tuning record for {wl.describe()} on {target.kind.name}: using the untuned "
        f"'{rule.name}' template; tune it with: {tune_command(wl, target)}",
        UntunedWarning,
    )
    return wl, sch, f"untuned:{rule.name}"


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


def build(candidates: ConvWorkload | Sequence[ConvWorkload], target: Target,
          use_disk_cache: bool = True) -> BuildResult:
    """Compile the best of `candidates` (see `choose_schedule`) for `target`, or load it from disk."""
    if isinstance(candidates, ConvWorkload):
        candidates = [candidates]
    wl, schedule, source = choose_schedule(candidates, target)
    if not use_disk_cache:
        module = tvm.compile(schedule.mod, target=target).mod
        return BuildResult(module[FUNC_NAME], module, source, None, False, wl)
    path = module_cache.artifact_path(f"{wl.key()}-{_cache_key(wl, target, schedule)}")
    module, from_disk = module_cache.load_or_build(path, lambda: tvm.compile(schedule.mod, target=target), FUNC_NAME)
    return BuildResult(module[FUNC_NAME], module, source, path, from_disk, wl)
