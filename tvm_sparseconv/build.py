"""Turn a workload into a runnable TVM function: pick the schedule, compile, cache on disk.

Algorithm and schedule: of the layer's workloads under each algorithm that runs on the target, the
one whose tuning record for this device (`tuning_logs/`) is fastest; else a record of another
device of its family (a CPU of its ISA family, a GPU of its CUDA architecture), compiled for this
device and checked against float64 on its first use here (`verification.py`; the verdict is kept
beside the module in the disk cache). On GPUs such a record also competes with this GPU's own
ones, its time taken `targets.family_time_factor` slower; on CPUs it never displaces them. With no
record that fits, the default of `algorithms.untuned_default` (on CPUs cpu-csr's default tile,
else an untuned template of `schedules/`), with a one-line warning naming the tune command.
Generated algorithms (`Algorithm.generated`: the kernel's values compiled into the code) are built
by `build_generated`, with the tile of their record (`tile_records.py`) or a default one;
`build_layer` (what `compile()` calls) takes one where its record beats the scheduled algorithms'.
Disk cache (`module_cache.py`): `$TVM_SPARSECONV_CACHE` (default `~/.cache/tvm_sparseconv`), one
shared library per (TVM version, target, workload, schedule), verified against its checksum before
it is loaded; a changed record or template gives a new file.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import tvm
from tvm.target import Target

from . import algorithms, module_cache, tir_build, tuning_records, verification
from ._warnings import warn_user
from .module_cache import cache_dir  # noqa: F401 - part of this module's API before module_cache
from .schedules import default_rule
from .targets import device_for, family_time_factor, target_isa_family, weighed_us
from .tir_build import compile_tir
from .workload import ConvWorkload

FUNC_NAME = algorithms.FUNC_NAME
log = logging.getLogger("tvm_sparseconv")


class UntunedWarning(UserWarning):
    """No tuning record for this workload and device: the untuned template is used."""


@dataclass(frozen=True)
class BuildResult:
    function: tvm.runtime.Function
    module: tvm.runtime.Module
    schedule_source: str  # "tuned:<rule>@<folder>", "tuned:<rule>@<folder> (family <f>, verified here)"
    # or "untuned:<rule>"
    cache_path: Path | None
    from_disk_cache: bool
    workload: ConvWorkload  # the chosen algorithm's

    @property
    def tuned(self) -> bool:
        return self.schedule_source.startswith("tuned")


#: The user's layer while `compile()` builds it as another workload (on CPUs a strided layer runs
#: as the stride-1 layer on its input's stride phases): the untuned warning's command tunes the layer.
_LAYER: contextvars.ContextVar[ConvWorkload | None] = contextvars.ContextVar("tsc_layer", default=None)


@contextlib.contextmanager
def building_layer(layer: ConvWorkload | None):
    """Within: builds compute `layer` as another workload (see `_LAYER`); None: the workload itself."""
    token = _LAYER.set(layer)
    try:
        yield
    finally:
        _LAYER.reset(token)


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


def _tuned_records(candidates: Sequence[ConvWorkload], target: Target, folder: Path | None = None) -> list[tuple]:
    """(never weighed, weighed time, workload, TunedSchedule) of each candidate with a record (its
    time `TunedSchedule.estimated_us`, weighed by `targets.weighed_us`; `folder`: this device's tuning
    logs folder, default `tuning_logs/<device>` and its family's)."""
    found = []
    for wl in candidates:
        try:
            tuned = tuning_records.find_tuned_schedule(wl, target, folder)
        except Exception as e:  # noqa: BLE001 - logs are read defensively; anything left is not fatal
            warn_user(f"could not read the tuning logs for {wl.describe()} ({type(e).__name__}: {e}); "
                      "ignoring them", tuning_records.TuningLogWarning)
            tuned = None
        if tuned is not None:
            found.append((*weighed_us(tuned.estimated_us, tuned.family), wl, tuned))
    return found


def choose_schedule(candidates: Sequence[ConvWorkload], target: Target, folder: Path | None = None,
                    found: list[tuple] | None = None):
    """(workload, schedule, source, tuned): the fastest record among `candidates` (the layer under
    each algorithm) as `targets.weighed_us` ranks them: this device's own and (GPUs) its architecture's,
    else the first found for another CPU of its ISA family (`tuned.travelled`), else the template of
    `algorithms.untuned_default` (or the first candidate's) with `tuned` None. `source` is what
    `BuildResult.schedule_source` reports.
    `found`: `_tuned_records(candidates, target, folder)` when the caller has read them already."""
    found = _tuned_records(candidates, target, folder) if found is None else found
    if found:
        *_, wl, tuned = min(found, key=lambda f: f[:2])
        source = f"tuned:{tuned.rule}@{tuned.folder.name}"
        if tuned.travelled:
            source += f" (family {tuned.family}, verified here)"
        return wl, tuned.schedule, source, tuned
    return (*_untuned(candidates, target), None)


def _untuned(candidates: Sequence[ConvWorkload], target: Target):
    """(workload, schedule, source) of the untuned template, with the `UntunedWarning` naming the
    tune command."""
    preferred = (algorithms.untuned_default(candidates[0], target.kind.name), algorithms.DEFAULT)
    wl = next((w for name in preferred for w in candidates if w.algorithm == name), candidates[0])
    rule = default_rule(target, wl.algorithm)
    sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
    if sch is None:
        raise RuntimeError(f"schedule rule {rule.name} does not apply to {wl.describe()}")
    _warn_untuned(wl, target, f"the untuned '{rule.name}' template")
    return wl, sch, f"untuned:{rule.name}"


def _warn_untuned(wl: ConvWorkload, target: Target, using: str, algorithm: str | None = None) -> None:
    """The `UntunedWarning` for `wl`: what runs instead (`using`) and the command that tunes the
    layer (for `algorithm`, where that is a generated one)."""
    layer = _LAYER.get()
    of_layer = f" (computing {layer.describe()})" if layer is not None else ""
    command = tune_command(layer or wl, target) + (f" --algorithm {algorithm} --tiles all" if algorithm else "")
    warn_user(f"no tuning record for {wl.describe()}{of_layer} on {target.kind.name}: using {using}; "
              f"tune it with: {command}", UntunedWarning)


def _cache_key(wl: ConvWorkload, target: Target, schedule) -> str:
    blob = json.dumps(
        {
            "tvm": tvm.__version__,
            "pipeline": tir_build.REVISION,
            "target": str(target),
            "host": str(target.host) if target.host else None,
            "workload": wl.to_json(),
            "trace": str(schedule.trace),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


_VERDICTS: dict[str, dict] = {}  # artifact name -> verdict, for modules not kept on disk
_VERDICT_LOCK = threading.Lock()


def _verified(wl: ConvWorkload, target: Target, name: str, path: Path | None, tuned, measure) -> dict:
    """The float64 check of a travelled record's module: the verdict kept in the cache, else run now
    (`measure()`: the module's relative error, from `verification`)."""
    with _VERDICT_LOCK:  # one check per module even when several threads compile the layer at once
        verdict = module_cache.read_verdict(path) if path is not None else None
        if verdict is None:
            verdict = _VERDICTS.get(name) or _check(wl, target, tuned, measure)
            if path is not None:  # also when checked earlier in this process, before the cache was emptied
                module_cache.write_verdict(path, verdict)
        _VERDICTS[name] = verdict
    return verdict


def _check(wl: ConvWorkload, target: Target, tuned, measure) -> dict:
    t0 = time.perf_counter()
    try:
        err, problem = measure(), None
    except Exception as e:  # noqa: BLE001 - a module that fails to run fails the check
        err, problem = float("inf"), f"{type(e).__name__}: {e}"
    # the algorithm's own precision: a TF32 record is as right as cuDNN TF32 within its tolerance
    verdict = {"ok": err <= algorithms.by_name(wl.algorithm).tolerance, "relative_error": err,
               "record": tuned.folder.name, "family": tuned.family, "target": str(target),
               "seconds": round(time.perf_counter() - t0, 3),
               "checked_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if problem:
        verdict["error"] = problem
    log.info("checked the record of %s from %s (family %s) on this device: relative error %.2e (%s)",
             wl.describe(), tuned.folder.name, tuned.family, err, "ok" if verdict["ok"] else "FAILED")
    return verdict


def build(candidates: ConvWorkload | Sequence[ConvWorkload], target: Target,
          use_disk_cache: bool = True, folder: Path | None = None, found: list[tuple] | None = None) -> BuildResult:
    """Compile the best of `candidates` (see `choose_schedule`) for `target`, or load it from disk.

    A record of another device of the family is checked against float64 on its first use; if it fails,
    the untuned template is used instead, with a `TuningLogWarning` saying why.
    """
    if isinstance(candidates, ConvWorkload):
        candidates = [candidates]
    wl, schedule, source, tuned = choose_schedule(candidates, target, folder, found)
    result = _compile(wl, schedule, source, target, use_disk_cache)
    if tuned is None or not tuned.travelled:
        return result
    name = f"{wl.key()}-{_cache_key(wl, target, schedule)}"
    verdict = _verified(wl, target, name, result.cache_path, tuned,
                        lambda: verification.check_function(result.function, wl, device_for(target)))
    if verdict["ok"]:
        return result
    warn_user(f"the tuning record of {wl.describe()} from {tuned.folder} (another device of family "
              f"{tuned.family}) gives wrong results on this device (relative error {verdict['relative_error']:.2e}"
              f"{', ' + verdict['error'] if verdict.get('error') else ''}): not used",
              tuning_records.TuningLogWarning)
    return _compile(*_untuned(candidates, target), target, use_disk_cache)


def _compile(wl: ConvWorkload, schedule, source: str, target: Target, use_disk_cache: bool) -> BuildResult:
    return _built(wl, source, lambda: compile_tir(schedule.mod, target),
                  _cache_key(wl, target, schedule) if use_disk_cache else None)


def _built(wl: ConvWorkload, source: str, compile_it, cache_key: str | None) -> BuildResult:
    """`compile_it()`'s module, or with a `cache_key` the disk cache's (built and stored if absent)."""
    if cache_key is None:
        module = compile_it().mod
        return BuildResult(module[FUNC_NAME], module, source, None, False, wl)
    path = module_cache.artifact_path(f"{wl.key()}-{cache_key}")
    module, from_disk = module_cache.load_or_build(path, compile_it, FUNC_NAME)
    return BuildResult(module[FUNC_NAME], module, source, path, from_disk, wl)


def _own_folder(target: Target, folder: Path | None) -> Path:
    from .targets import target_folder_name

    return folder if folder is not None else tuning_records.logs_root() / target_folder_name(target)


@dataclass(frozen=True)
class TileRecord:
    """A generated algorithm's record of a layer shape (`tile_records`), the folder it was read from
    and, when that folder is another device's of this device's family, the family."""

    record: dict
    folder: Path
    family: str | None = None

    @property
    def travelled(self) -> bool:
        return self.family is not None


def generated_record(wl: ConvWorkload, target: Target, folder: Path | None = None,
                     nonzeros: int | None = None) -> TileRecord | None:
    """The tile record of `wl`'s shape under its generated algorithm, measured nearest to
    `nonzeros` where the shape has one per density (`tile_records.find`): in `folder` if given; else,
    as for MetaSchedule records (`tuning_records.find_tuned_schedule`), on a CPU this CPU's folder,
    else the first folder of another CPU of its ISA family that has one; on a GPU the fastest of
    this GPU's and its architecture's (`targets.weighed_us`). Records naming an unknown tile (warned) or a
    tile over the algorithm's compile-time budget are skipped."""
    from . import tile_records

    algorithm = algorithms.by_name(wl.algorithm)
    if folder is not None:
        places = [(folder, None)]
    else:
        family = target_isa_family(target)
        places = [(_own_folder(target, None), None)]
        places += [(f, family) for f, _ in tuning_records.family_folders(target)]
    first_found = family_time_factor(target_isa_family(target)) is None  # CPUs: own, else the first of the family
    found = []
    for place, family in places:
        record = tile_records.find(place, wl.algorithm, wl, nonzeros)
        if record is None:
            continue
        if record["tile"] not in algorithm.tiles():
            warn_user(f"the {wl.algorithm} record of {wl.describe()} in {place} names an unknown tile "
                      f"{record['tile']!r}; not used", tuning_records.TuningLogWarning)
            continue
        if not algorithm.fits(wl, algorithm.tiles()[record["tile"]]):
            log.info("%s: the %s record's tile %s is over the compile-time budget; not used", wl.describe(),
                     wl.algorithm, record["tile"])
            continue
        found.append(TileRecord(record, place, family))
        if first_found:
            break
    if not found:
        return None
    # GPUs: the fastest of this GPU's and its architecture's, as `targets.weighed_us` weighs them (own first on a tie)
    return min(found, key=lambda f: weighed_us(tile_records.estimated_seconds(f.record, nonzeros or 1), f.family))


def build_generated(kernel, wl: ConvWorkload, target: Target, folder: Path | None = None,
                    use_disk_cache: bool = True) -> BuildResult:
    """Compile `wl` under a generated algorithm (`Algorithm.generated`: its code holds `kernel`'s
    values) with the tile of its record (`generated_record`), else its default tile; cached on disk
    by the kernel's digest, the workload and the tile. A record of another device of the family is
    checked against float64 on its first use (the default tile is used if that fails)."""
    from .algorithms.base import kernel_digest

    algorithm = algorithms.by_name(wl.algorithm)
    if not algorithm.generated:
        raise ValueError(f"{wl.algorithm} is not a generated algorithm")
    found = generated_record(wl, target, folder, int(kernel.nnz))
    if found is not None:
        name, source = found.record["tile"], f"tuned:{wl.algorithm} {found.record['tile']}@{found.folder.name}"
        if found.travelled:
            source += f" (family {found.family}, verified here)"
    else:
        name = algorithm.default_tile(wl)
        source = f"untuned:{wl.algorithm} {name}"
    result = _build_tile(kernel, wl, target, name, source, use_disk_cache)
    if found is None or not found.travelled:
        return result
    key = f"{wl.key()}-{name}-{kernel_digest(kernel)}"
    verdict = _verified(wl, target, key, result.cache_path, found,
                        lambda: verification.check_generated(result.function, kernel, wl, device_for(target)))
    if verdict["ok"]:
        return result
    warn_user(f"the {wl.algorithm} record of {wl.describe()} from {found.folder} (another device of family "
              f"{found.family}) gives wrong results on this device (relative error {verdict['relative_error']:.2e}"
              f"{', ' + verdict['error'] if verdict.get('error') else ''}): using the default tile",
              tuning_records.TuningLogWarning)
    name = algorithm.default_tile(wl)
    return _build_tile(kernel, wl, target, name, f"untuned:{wl.algorithm} {name}", use_disk_cache)


def _build_tile(kernel, wl: ConvWorkload, target: Target, name: str, source: str, use_disk_cache: bool) -> BuildResult:
    algorithm = algorithms.by_name(wl.algorithm)
    tile = algorithm.tiles()[name]
    key = None
    if use_disk_cache:
        blob = json.dumps({"tvm": tvm.__version__, "target": str(target), "workload": wl.to_json(),
                           "tile": tile.as_dict(), "kernel": algorithm.code_key(kernel),
                           "emitter": algorithm.emitter_version},
                          sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return _built(wl, source, lambda: algorithm.build(kernel, wl, tile, target), key)


#: records this close (relative) are a tie, which `choose_generated` gives to the algorithm of short
#: code: records come from different runs, whose times move a few percent (H200 batch-1 layers:
#: +-5% between network runs), while a generated algorithm's code per nonzero costs up to ~35 s of
#: compile time per layer on 2 cores (csr-split-k or a scheduled algorithm: 1-4 s)
TIE_MARGIN = 0.03


def choose_generated(kernel, candidates: Sequence[ConvWorkload], generated: Sequence[ConvWorkload], target: Target,
                     folder: Path | None = None) -> tuple[ConvWorkload | None, list[tuple] | None]:
    """(the generated workload to build, or None; the scheduled records read, if any, for `build`).

    `candidates`: the layer under each scheduled algorithm (MetaSchedule records, `run_us`);
    `generated`: under each generated one (tile records, `generated_record`, their time scaled up
    to `kernel`'s nonzeros by `tile_records.estimated_seconds`). A generated algorithm is chosen
    only with a record, and only where no scheduled record is as fast as `targets.weighed_us` weighs them
    (a GPU record of the architecture counts `family_time_factor` slower). Within `TIE_MARGIN`, a
    record of short code (a scheduled algorithm, or a generated one without `code_per_nonzero`)
    wins over one whose code grows with the nonzeros. A record of another CPU
    of the ISA family is not weighed against this CPU's own scheduled records (times of two
    machines), so there those win; it competes only with scheduled records of its own folder.
    """
    from . import tile_records

    estimates = []
    for wl in generated:
        found = generated_record(wl, target, folder, int(kernel.nnz))
        if found is not None:
            us = tile_records.estimated_seconds(found.record, kernel.nnz) * 1e6
            estimates.append((*weighed_us(us, found.family), wl, found))
    if not estimates:
        return None, None
    scheduled = _tuned_records(candidates, target, folder)
    never_weighed, gen_us, gen_wl, found = min(estimates, key=lambda e: e[:2])
    long_code = algorithms.by_name(gen_wl.algorithm).code_per_nonzero
    if long_code:  # a record of short code that ties with it wins: same speed, a fraction of the compile time
        short = [e for e in estimates if e[0] == never_weighed and e[1] <= gen_us * (1 + TIE_MARGIN)
                 and not algorithms.by_name(e[2].algorithm).code_per_nonzero]
        if short:
            never_weighed, gen_us, gen_wl, found = min(short, key=lambda e: e[:2])
            long_code = False
    if never_weighed:  # another CPU's record: only its own folder's scheduled records are comparable
        if any(not f[0] for f in scheduled):
            return None, scheduled
        rivals = [f[1] for f in scheduled if f[3].folder.name == found.folder.name]
    else:
        rivals = [f[1] for f in scheduled if not f[0]]
    if rivals and min(rivals) <= gen_us * (1 + TIE_MARGIN if long_code else 1):
        return None, scheduled
    log.info("%s: %s (record %.1f us as weighed, %s) over the scheduled algorithms (best record there %s us)",
             gen_wl.describe(), gen_wl.algorithm, gen_us, found.folder.name, f"{min(rivals):.1f}" if rivals else "none")
    return gen_wl, scheduled


def has_record(kernel, wl: ConvWorkload, target: Target) -> bool:
    """Whether `compile()` finds a record for this layer on `target`: a MetaSchedule record of one
    of its scheduled algorithms or a tile record of a generated one, this device's own or (as
    `choose_generated` takes them) its family's. Nothing is built."""
    kind = target.kind.name
    if _tuned_records(algorithms.workloads_for(kernel, wl, kind), target):
        return True
    return any(generated_record(g, target, nonzeros=int(kernel.nnz)) is not None
               for g in algorithms.generated_workloads_for(kernel, wl, kind))


def build_layer(kernel, candidates: Sequence[ConvWorkload], generated: Sequence[ConvWorkload], target: Target,
                use_disk_cache: bool = True, folder: Path | None = None) -> BuildResult:
    """`compile()`'s choice for a layer: the fastest of its algorithms by their records on this
    device (`choose_generated`), built by `build_generated` or `build`. Without any record, the
    default of `algorithms.untuned_default`: a generated algorithm's default tile where that is one
    (CPUs: cpu-csr), else its untuned template."""
    chosen, found = choose_generated(kernel, candidates, generated, target, folder)
    if chosen is not None:
        return build_generated(kernel, chosen, target, folder, use_disk_cache)
    found = _tuned_records(candidates, target, folder) if found is None else found
    if not found and candidates:
        default = algorithms.untuned_default(candidates[0], target.kind.name)
        wl = next((w for w in generated if w.algorithm == default), None)
        if wl is not None:
            tile = algorithms.by_name(default).default_tile(wl)
            _warn_untuned(wl, target, f"{default}'s default tile {tile}", algorithm=default)
            return build_generated(kernel, wl, target, folder, use_disk_cache)
    return build(candidates, target, use_disk_cache, folder, found)
