"""MetaSchedule tuning of one problem: search, check the winner, keep it in `tuning_logs/<device>/`.

- Design space: the rules of `schedules/` for the target, drawn with MetaSchedule's sampling
  instructions (`tunable=True`); evolutionary search ranked by the XGBoost cost model.
- Builder: one pool of build processes per tuning process, kept across batches and workloads,
  building without importing `tvm.s_tir.tensor_intrin` (`tuning_builder.py`).
- Runner: every candidate runs on the problem's real sparse pattern (`f_alloc_argument`), not on
  random index arrays, so its time is the pattern's time and its reads stay in bounds.
- Check: MetaSchedule does not look at results, so the best records are replayed, run on the real
  pattern with a NaN-poisoned output and compared with a float64 reference; the first one within
  tolerance is kept; it is timed again beside the rules' untuned templates, on a GPU as the
  benchmarks time it (inputs rotated past L2, `_seconds_in_turns`), and that time is stored. Only
  that record is written to the committed database.
- Resume: a per-problem work directory keeps every measured record (warm start after a stop);
  problems already in `meta.json` are skipped unless forced.
- Elsewhere: with a `Tracker` (see `rpc.py`), candidates and the check run on the RPC servers of
  its key; several problems can be tuned at once by separate processes, which write the shared
  database under a file lock.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import importlib.util
import json
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import sys
import time
import types
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object
from tvm.target import Target

from . import baselines, reference
from . import algorithms
from .rpc import RemoteSite, Tracker, rpc_alloc_argument
from .schedules import RULE_ANNOTATION, RULES, rules_for
from .targets import device_for
from .tir_build import compile_tir
from .tuning_builder import BUILD_TIMEOUT_S, build_without_tensor_intrinsics, pooled_builder
from .tuning_runner import tracker_runner
from .tuning_records import (META_FILE, drop_workload, entry_workload, family_folders, find_tuned_schedule,
                             keep_newest_record, meta_header, read_meta, repair_folder, workload_module)
from .workload import ConvWorkload
from .workloads import Problem

log = logging.getLogger("tvm_sparseconv")


def problem_arguments(problem: Problem, seed: int = 0, algorithm: str = algorithms.DEFAULT):
    """(workload, dense kernel, [x, weights..., (bias)]) as numpy arrays: the real pattern."""
    kernel = problem.sparse_kernel()
    wl = problem.workload(kernel, algorithm)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    arrays = [x, *algorithms.pack_weights(wl, kernel)]
    if wl.has_bias:
        arrays.append(rng.standard_normal(wl.out_channels, dtype=np.float32))
    return wl, kernel.to_dense(), arrays


def _prepare_meta_schedule_logger(quiet: bool) -> None:
    """Set up MetaSchedule's logger before a tuning call.

    `quiet`: warnings only. MetaSchedule sizes its console handler from the logger's level at each
    tuning call and leaves the level at DEBUG afterwards, so it is set again for every call.
    Unnamed handlers are dropped: `tune_tir` rebuilds its logging config from the names of its
    logger's handlers and fails on one without a name (`'NoneType' object has no attribute
    'format'`), e.g. pytest's log capture handler, there after an earlier tuning call in the process.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if quiet:
        logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def make_alloc_argument(arrays: list[np.ndarray]) -> Callable:
    """An `f_alloc_argument` for MetaSchedule's runner that uploads the real arguments."""

    def alloc(device, args_info, alloc_repeat):
        out_shape = tuple(args_info[-1][2])  # ["TENSOR", dtype, shape]
        repeated = []
        for _ in range(alloc_repeat):
            args = [tvm.runtime.tensor(a, device) for a in arrays]
            args.append(tvm.runtime.empty(out_shape, "float32", device))
            repeated.append(args)
        return repeated

    return alloc


def tuned_rules(target: Target, rule_names: list[str] | None = None,
                algorithm: str = algorithms.DEFAULT) -> list:
    """The rules tuning draws from: those written for the target and algorithm, or of them the named."""
    rules = [r for r in rules_for(target, algorithm) if rule_names is None or r.name in rule_names]
    if not rules:
        raise ValueError(f"no schedule rule for {algorithm} on {target.kind.name} among {rule_names}")
    return rules


def design_space(target: Target, rule_names: list[str] | None = None,
                 algorithm: str = algorithms.DEFAULT) -> ms.space_generator.ScheduleFn:
    """One design space per rule written for the target and algorithm (all of them by default),
    and per structural variant of a rule (`SparseConvRule.design_variants`)."""
    rules = [v for r in tuned_rules(target, rule_names, algorithm) for v in r.design_variants()]

    def spaces(sch):
        out = [r.schedule_into(sch.copy(), target, True) for r in rules]
        return [s for s in out if s is not None]

    # Everything given, so MetaSchedule builds no target defaults: those for sm_75+ and VNNI CPUs
    # need the tensor intrinsics we leave unimported. A ScheduleFn applies no schedule rules; the
    # postprocessors and mutators are the target's defaults minus RewriteTensorize, which only
    # acts on blocks marked for tensorization (ours never are).
    kind = "cuda" if target.kind.name == "cuda" else "llvm"
    return ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs=kind, mutator_probs=kind)


def rule_of(trace) -> str:
    """The rule that produced a trace (its annotation on the conv block)."""
    text = str(trace)
    for rule in RULES:
        if f'ann_key="{RULE_ANNOTATION}", ann_val="{rule.name}"' in text:
            return rule.name
    return "?"


def reduction_shares(trace) -> int:
    """In how many shares a trace splits its reduction (an `rfactor` of the outer loop of a split,
    as union-tf32's `_split_reduction` does; its design spaces differ in that), 1 where it does not."""
    splits = [inst for inst in trace.insts if inst.kind.name == "Split"]
    for inst in trace.insts:
        if inst.kind.name == "RFactor":
            split = next((s for s in splits if s.outputs[0].same_as(inst.inputs[0])), None)
            if split is not None and split.inputs[1] is not None:
                return int(split.inputs[1])
    return 1


def reduction_in_cluster(trace) -> bool:
    """Whether a trace's split reduction sums its shares in a thread-block cluster (union-tf32's
    `_cluster_reduction` annotates the sum), not in a second kernel."""
    from .schedules.cuda_union_tf32 import CLUSTER_SUM_ATTR

    return any(inst.kind.name == "Annotate" and str(inst.attrs[0]) == CLUSTER_SUM_ATTR for inst in trace.insts)


TENSOR_INTRIN_MODULE = "tvm.s_tir.tensor_intrin"


@contextmanager
def _tensor_intrinsics_not_imported():
    """Keeps MetaSchedule's `TuneContext` from importing `tvm.s_tir.tensor_intrin` while we tune.

    That import parses hundreds of TVMScript tensor-core and SIMD intrinsics (about 20 s on the
    H200 machine's CPU, 45 s on a 2-core one) once in every tuning process; our design spaces use
    none of them (the builder skips the same import, `tuning_builder.py`). An empty module stands
    in while tuning runs, unless the real one is already loaded; it is removed afterwards, so a
    later import elsewhere in the process gets the real module.
    """
    if TENSOR_INTRIN_MODULE in sys.modules:
        yield
        return
    stand_in = sys.modules[TENSOR_INTRIN_MODULE] = types.ModuleType(TENSOR_INTRIN_MODULE)
    try:
        yield
    finally:
        if sys.modules.get(TENSOR_INTRIN_MODULE) is stand_in:
            del sys.modules[TENSOR_INTRIN_MODULE]


@derived_object
class ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Reports every measured batch to `on_batch(n_measured, best_seconds)`."""

    def __init__(self, on_batch: Callable[[int, float], None]):
        self.on_batch = on_batch
        self.best = float("inf")

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        for r in runner_results:
            if r.error_msg is None and r.run_secs:
                self.best = min(self.best, float(np.mean([float(s) for s in r.run_secs])))
        self.on_batch(len(runner_results), self.best)


class LocalSite:
    """Runs a compiled module on this machine's device (`rpc.RemoteSite` runs it on a server)."""

    def __init__(self, device: tvm.runtime.Device):
        self.device = device

    def load(self, lib) -> tvm.runtime.Module:
        """`lib` (a module, or `tvm.compile`'s Executable) as a runtime module here."""
        return lib.mod if isinstance(lib, tvm.runtime.Executable) else lib

    def load_artifact(self, path: str) -> tvm.runtime.Module:
        """A builder's exported library (`ms.builder.BuilderResult.artifact_path`) loaded here."""
        return tvm.runtime.load_module(path)


_runners: dict[tuple, ms.runner.Runner] = {}


@atexit.register
def _stop_runners() -> None:
    """Stop the kept runners' worker processes with this process."""
    for runner in _runners.values():
        runner._inst.pool.shutdown()
    _runners.clear()


def make_runner(arrays, on_gpu: bool, tracker: Tracker | None = None, rpc_workers: int = 1,
                rpc_session_per: str = "batch") -> ms.runner.Runner:
    """Times candidates on this machine, or on the tracker's servers (`rpc_workers` at once, with
    one session per share of a batch or per candidate: `tuning_runner.tracker_runner`).

    One runner per configuration is kept for the life of the process: MetaSchedule's runners
    start a worker process and sanity-check it when created (seconds, for every workload
    otherwise). Only the arguments change between problems; the runner reads them at each run.
    """
    key = (on_gpu, tracker, rpc_workers, rpc_session_per)
    alloc = make_alloc_argument(arrays)
    runner = _runners.get(key)
    if runner is None:
        config = ms.runner.EvaluatorConfig(
            number=5 if on_gpu else 1, repeat=3, min_repeat_ms=0 if on_gpu else 50, enable_cpu_cache_flush=False,
        )
        if tracker is not None:
            runner = tracker_runner(tracker, alloc, config, max_workers=rpc_workers, session_per=rpc_session_per)
        else:
            runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=config, f_alloc_argument=alloc)
        _runners[key] = runner
    # `_inst` is the Python object behind TVM's derived_object wrapper; run() reads its field.
    runner._inst.f_alloc_argument = rpc_alloc_argument(alloc) if tracker is not None else alloc
    return runner


@dataclass
class TuneResult:
    problem: str
    workload: ConvWorkload
    rule: str
    best_seconds: float
    relative_error: float
    trials: int
    tuning_seconds: float
    rejected: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds, MetaSchedule's profiler scopes + "Check"
    measured: int = 0  # candidates measured in this run (`trials` asked for; see enough_trials)
    #: why the record was not written (the folder's record of the workload was faster), else ""
    not_kept: str = ""
    #: where the kept schedule came from: "search", or the label of the untuned template
    #: (`SparseConvRule.untuned_label`) or of another device's record (`family_records`) that ran
    #: faster than the search's best
    source: str = "search"
    #: microseconds of each candidate timed in turns at the end (the search's best, "search", and
    #: each untuned variant by label), so a summary shows what the kept schedule beat
    candidates_us: dict[str, float] = field(default_factory=dict)
    #: the kept schedule's reduction shares (`reduction_shares`: which split design space it is of)
    reduction_shares: int = 1
    #: whether those shares add up in a thread-block cluster (`reduction_in_cluster`)
    reduction_in_cluster: bool = False


def tune_problem(
    problem: Problem,
    target: Target,
    out_folder: Path,
    trials: int,
    work_root: Path,
    rule_names: list[str] | None = None,
    trials_per_iter: int = 64,
    on_batch: Callable[[int, float], None] | None = None,
    device_name: str = "",
    tracker: Tracker | None = None,
    rpc_workers: int = 1,
    rpc_session_per: str = "batch",
    builder_workers: int | None = None,
    search_threads: int | None = None,
    pooled_builds: bool = True,
    quiet: bool = False,
    algorithm: str = algorithms.DEFAULT,
) -> TuneResult:
    """Tune `problem` for `target`; the checked best record goes into `out_folder`.

    With `tracker`, candidates run on its servers (`rpc_workers` sessions at once, each for a share
    of a batch, or for one candidate with `rpc_session_per="candidate"`) and the check runs on one
    of them; `builder_workers` caps local build processes and `search_threads` the
    evolutionary search's threads (defaults: all cores, all physical cores). `pooled_builds=False`
    builds with MetaSchedule's `LocalBuilder` (fresh processes per batch) instead of this process's
    pool (`tuning_builder.py`). `quiet`: MetaSchedule logs warnings only. `algorithm`: which
    computation of the layer (`tvm_sparseconv.algorithms`) is tuned: on CPUs a strided 1x1 layer
    as `compile()` computes it there (`Problem.for_target`).
    """
    t_start = time.time()
    problem = problem.for_target(target.kind.name)
    read_meta(out_folder)  # a damaged meta.json refuses now (TuningLogError), not after the search
    wl, dense_w, arrays = problem_arguments(problem, algorithm=algorithm)
    mod = workload_module(wl)
    work_dir = work_root / wl.key()
    work_dir.mkdir(parents=True, exist_ok=True)
    runner = make_runner(arrays, target.kind.name == "cuda", tracker, rpc_workers, rpc_session_per)
    if pooled_builds:
        builder = pooled_builder(builder_workers)
    else:
        builder = ms.builder.LocalBuilder(f_build=build_without_tensor_intrinsics, timeout_sec=BUILD_TIMEOUT_S,
                                          max_workers=builder_workers)
    _prepare_meta_schedule_logger(quiet)
    measured = 0

    def count(n: int, best_s: float) -> None:
        nonlocal measured
        measured += n
        if on_batch is not None:
            on_batch(n, best_s)

    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), ProgressCallback(count)]
    per_iter = min(trials_per_iter, trials)
    with ms.Profiler() as profiler, _tensor_intrinsics_not_imported():
        database = ms.tune_tir(
            mod,
            target,
            str(work_dir),
            max_trials_global=enough_trials(trials, per_iter),
            max_trials_per_task=trials,
            num_trials_per_iter=per_iter,
            space=design_space(target, rule_names, algorithm),
            builder=builder,
            runner=runner,
            cost_model="xgb",
            strategy="evolutionary",
            measure_callbacks=callbacks,
            num_tuning_cores=search_threads or "physical",
        )
        with ms.Profiler.timeit("Check"):
            site = RemoteSite(tracker, target) if tracker is not None else LocalSite(device_for(target))
            ref = reference.conv2d_f64(arrays[0], dense_w, wl, arrays[3] if wl.has_bias else None)
            record, err, rejected, lib = _first_correct_record(database, mod, wl, ref, arrays, target, site)
            record, err, source, lib, candidates_us = _search_or_untuned(
                record, err, lib, mod, wl, ref, arrays, target, site, tuned_rules(target, rule_names, algorithm),
                builder, family_records(wl, target, out_folder) + other_width_records(wl, target, out_folder))
            same_run = _against_folder_record(out_folder, lib, wl, target, site, arrays)
    best = float(np.mean([float(s) for s in record.run_secs]))
    not_kept = _keep_record(out_folder, record, mod, wl, problem, target, best, err, device_name, same_run)
    phases = {k: float(v) for k, v in profiler.get().items()}
    return TuneResult(problem.name, wl, rule_of(record.trace), best, err, trials, time.time() - t_start, rejected,
                      phases, measured, not_kept, source, candidates_us, reduction_shares(record.trace),
                      reduction_in_cluster(record.trace))


def enough_trials(trials: int, per_iter: int) -> int:
    """Measured candidates after which no new search round starts: `trials` less 1/8 of a round.

    The evolutionary search sometimes returns a few fewer distinct candidates than a round asks
    for (63 of 64), and MetaSchedule then runs a whole round (sampling, evolution: 8-12 s on the
    H200 machine, as long as the round before) for the one or two missing. A round that falls
    short by at most 1/8 ends the workload instead; one that falls shorter is still topped up
    (up to `trials`, the per-task limit).
    """
    return trials - per_iter // 8


def _first_correct_record(database, mod, wl, ref, arrays, target, site, top_k: int = 8):
    """(record, relative error, rejected, its kernel built at `site`): the fastest record whose
    output matches the float64 reference `ref`; raises if none does."""
    workload = database.commit_workload(mod)
    records = database.get_top_k(workload, top_k)
    if not records:
        raise RuntimeError(f"no successful candidate for {wl.describe()} (every build or run failed)")
    rejected = []
    for rec in records:
        sch = tvm.s_tir.Schedule(mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        lib = site.load(compile_tir(sch.mod, target))
        err = _checked_error(lib, site, arrays, wl, ref)
        if err <= algorithms.by_name(wl.algorithm).tolerance:
            return rec, err, rejected, lib
        run_us = np.mean([float(s) for s in rec.run_secs]) * 1e6
        rejected.append(f"{rule_of(rec.trace)} run {run_us:.1f} us: rel. error {err:.2e}")
    raise RuntimeError(f"none of the {len(records)} best candidates is correct: {rejected}")


def _against_folder_record(folder: Path, new_lib, wl: ConvWorkload, target, site, arrays,
                           rounds: int = 7) -> tuple[float, float] | None:
    """(the folder's record of `wl`, the new record's kernel `new_lib`, built at `site`): seconds per
    call, timed in turns in this run, or None where the folder has no record of exactly `wl` (or it
    no longer replays).

    A re-tune (`tune.py --force`) decides on these, not on the old record's stored time: that was
    measured on another day, and on a shared 2-core VM the same kernel's time moves up to 2x between
    minutes (stop 34: a headline record replaced by one not faster)."""
    try:
        old = find_tuned_schedule(wl, target, folder)
    except Exception:  # noqa: BLE001 - an unreadable folder record: the stored time decides, as before
        return None
    if old is None or old.tuned_workload != wl:
        return None
    try:
        old_lib = site.load(compile_tir(old.schedule.mod, target))
        old_s, new_s = _seconds_in_turns([old_lib, new_lib], site, arrays, wl, rounds)
    except Exception as e:  # noqa: BLE001 - the old record no longer builds or runs here: the new one's case
        log.warning("could not time the folder's record of %s beside the new one (%s): stored times decide",
                    wl.describe(), e)
        return None
    return old_s, new_s


#: rounds of `_seconds_in_turns` and, on a GPU, batches of 10 calls a kernel per round
TURN_ROUNDS = 7
TURN_BATCHES = 5


def _times_as_the_bench(site) -> bool:
    """Whether `_seconds_in_turns` times on rotated inputs with CUDA events at `site`: this
    machine's GPU, with PyTorch (whose events the benchmarks use) there."""
    if not (isinstance(site, LocalSite) and site.device.dlpack_device_type() == tvm.cuda().dlpack_device_type()):
        return False
    if importlib.util.find_spec("torch") is None:
        log.warning("PyTorch is not installed: records are timed on one input (in L2), not as scripts/bench.py times them")
        return False
    return True


def _seconds_in_turns(libs: list, site, arrays, wl: ConvWorkload, rounds: int = TURN_ROUNDS) -> list[float]:
    """Median seconds per call of each built kernel, timed in turns so that a drifting clock or a
    neighbour's load hits them all alike.

    On this machine's GPU, as the benchmarks time a layer (`baselines.cuda_event_median`): device
    time of calls back to back, each on the next of a rotation of inputs larger than the L2 cache.
    TVM's `time_evaluator` (elsewhere: CPUs, a tracker's servers) repeats one input, which stays in
    L2 after its untimed first call: on the H100 that favoured conv5 3x3 s2 b32's synchronous copy
    (37.9 us tuned, 49.7 in the bench) over the asynchronous one that hides DRAM reads."""
    rest = [tvm.runtime.tensor(a, site.device) for a in arrays[1:]]
    out = tvm.runtime.tensor(np.zeros(wl.output_shape, np.float32), site.device)
    if _times_as_the_bench(site):
        xs = baselines.rotated_inputs(wl.input_shape, site.device)  # (one rotation for them all)
        calls = [baselines.rotated_calls(lib[algorithms.FUNC_NAME], xs, rest, out) for lib in libs]
        samplers = [functools.partial(baselines.cuda_event_median, call, TURN_BATCHES) for call in calls]
    else:
        args = [tvm.runtime.tensor(arrays[0], site.device), *rest]
        timers = [lib.time_evaluator(algorithms.FUNC_NAME, site.device, number=1, repeat=1, min_repeat_ms=20)
                  for lib in libs]

        def evaluate(timer) -> float:
            return timer(*args, out).mean

        samplers = [functools.partial(evaluate, timer) for timer in timers]
    samples: list[list[float]] = [[] for _ in libs]
    for _ in range(rounds):
        for sample, got in zip(samplers, samples):
            got.append(sample())
    return [float(np.median(s)) for s in samples]


def family_records(wl: ConvWorkload, target: Target, out_folder: Path) -> list[tuple[str, object]]:
    """(label, schedule) of `wl`'s record in each folder of another device of `target`'s family
    (`tuning_records.family_folders`; `out_folder` is this device's).

    `compile()` weighs a GPU record of the architecture 1.5x slower than an own one
    (`targets.family_time_factor`), so an own record, once written, displaces it even where it runs
    slower here: the H100's tuned conv5 3x3 b1 (21.2 us) displaced the H200's record, which runs in
    14.6 us on the H100 (stop 56). Timed beside the search's best, the faster one is kept."""
    found = []
    for folder, _ in family_folders(target, own=out_folder.name):
        tuned = _record_in(folder, wl, target)
        if tuned is not None:
            found.append((f"{folder.name}'s record ({tuned.rule})", tuned.schedule))
    return found


def _record_in(folder: Path, wl: ConvWorkload, target: Target):
    """`folder`'s record of `wl` (`find_tuned_schedule`), None where it has none or cannot be read."""
    try:
        return find_tuned_schedule(wl, target, folder)
    except Exception as e:  # noqa: BLE001 - a damaged log: its users are warned when they use it
        log.warning("could not read %s's record of %s: %s", folder.name, wl.describe(), e)
        return None


def other_width_records(wl: ConvWorkload, target: Target, out_folder: Path) -> list[tuple[str, object]]:
    """(label, schedule) of this folder's record of `wl`'s shape at another ELL width, where
    `compile()` would replay it for `wl` (`tuning_records.find_tuned_schedule`: the nearest width).

    Its time, measured at the other width, does not say how it runs `wl`'s, so `compile()` scales
    it up by the widths' ratio (`TunedSchedule.estimated_us`): timed here beside the search, it becomes
    `wl`'s own record where it is the fastest. On the H100 the union record of conv5 3x3 s2 b1 pruned
    in blocks of 8 channels (48 taps a chunk) ran the elementwise layer (192) in 12.4 us, where
    its record took 18.8 (stop 57)."""
    tuned = _record_in(out_folder, wl, target)
    if tuned is None or tuned.tuned_workload.ell_width == wl.ell_width:
        return []  # none, or the layer's own (timed against the new one in `_against_folder_record`)
    return [(f"{out_folder.name}'s record of width {tuned.tuned_workload.ell_width} ({tuned.rule})", tuned.schedule)]


def _search_or_untuned(record, err: float, lib, mod, wl: ConvWorkload, ref: np.ndarray, arrays, target, site,
                       rules: list, builder: ms.builder.Builder | None = None,
                       others: list[tuple[str, object]] = ()) -> tuple:
    """(record, relative error, source, its kernel, every candidate's microseconds by label): the
    search's checked best (`lib`, built at `site`), or an untuned template of the tuned `rules`
    (`SparseConvRule.untuned_variants`) or one of `others` ((label, schedule): `family_records`,
    `other_width_records`) as a record where it is correct and runs faster in this run, timed in
    turns with it.

    The search does not always draw the templates' choices: 16 trials on conv4 1x1 expand b32 g8
    kept a 25.4 us kernel where the untuned template with its k steps unrolled takes 21.8 (H100,
    stop 43); with this, a tuned layer is never slower than its untuned default. With `builder`
    (the tuning's), the variants build on its workers at once (28 on a KxK union layer; 20 built one
    after another here, the Check phase took 37-42 s of a 75-85 s 16-trial tuning of conv4/conv5
    3x3 b32 g8 on the H100, stop 49), else here in turn."""
    tol = algorithms.by_name(wl.algorithm).tolerance
    entries, libs = [("search", None, err)], [lib]
    labelled = [(f"{v.name} {v.untuned_label()}", sch) for v, sch in untuned_schedules(rules, mod, target)]
    labelled += list(others)
    built = _build_all(builder, [sch.mod for _, sch in labelled], target, site)
    for (label, sch), v_lib in zip(labelled, built):
        try:
            if isinstance(v_lib, BaseException):
                raise v_lib
            v_err = _checked_error(v_lib, site, arrays, wl, ref)
        except Exception as e:  # noqa: BLE001 - a template that does not build here is left out, not fatal
            log.warning("%s of %s did not build or run: %s", label, wl.describe(), e)
            continue
        if v_err <= tol:
            entries.append((label, sch, v_err))
            libs.append(v_lib)
        else:
            log.warning("%s of %s is wrong here (relative error %.2e): left out", label, wl.describe(), v_err)
    seconds = _seconds_in_turns(libs, site, arrays, wl)
    timed = {label: round(s * 1e6, 2) for (label, _, _), s in zip(entries, seconds)} if len(libs) > 1 else {}
    i = int(np.argmin(seconds))
    # the kept record's time is this one (the search's runner timed it as time_evaluator does)
    source, sch, v_err = entries[i]
    trace = record.trace if i == 0 else sch.trace
    kept = ms.database.TuningRecord(trace, record.workload, [seconds[i]], target, record.args_info)
    return kept, v_err, source, libs[i], timed


def _build_all(builder: ms.builder.Builder | None, mods: list[tvm.IRModule], target: Target, site) -> list:
    """Each of `mods` built and loaded at `site` (or the exception that stopped it): on `builder`'s
    workers all at once where one is given, else one after another here."""
    if builder is None:
        out = []
        for m in mods:
            try:
                out.append(site.load(compile_tir(m, target)))
            except Exception as e:  # noqa: BLE001 - the caller reports it per kernel
                out.append(e)
        return out
    results = builder.build([ms.builder.BuilderInput(m, target) for m in mods]) if mods else []
    out = []
    for res in results:
        try:
            if res.error_msg:
                raise RuntimeError(res.error_msg.strip().splitlines()[-1] if res.error_msg.strip() else "build failed")
            out.append(site.load_artifact(res.artifact_path))
        except Exception as e:  # noqa: BLE001 - the caller reports it per kernel
            out.append(e)
        finally:
            if res.artifact_path:  # the builder's temporary folder (MetaSchedule's runner removes its own)
                shutil.rmtree(os.path.dirname(res.artifact_path), ignore_errors=True)
    return out


def untuned_schedules(rules: list, mod: tvm.IRModule, target: Target) -> list[tuple]:
    """(variant, schedule) of each of the `rules`' untuned variants that schedules `mod`, once per
    distinct schedule: variants that differ in a choice the layer does not have (union-tf32's
    KxK group caps on a 1x1 layer) schedule it alike."""
    found: list[tuple] = []
    for variant in (v for rule in rules for v in rule.untuned_variants()):
        sch = variant.apply(mod["main"], target, False)
        if sch is not None and not any(tvm_ffi.structural_equal(sch.mod, other.mod) for _, other in found):
            found.append((variant, sch))
    return found


def _checked_error(lib, site, arrays, wl: ConvWorkload, ref: np.ndarray) -> float:
    """The relative error of a built kernel's output (NaN-poisoned before the run) against `ref`."""
    args = [tvm.runtime.tensor(a, site.device) for a in arrays]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), site.device)
    lib[algorithms.FUNC_NAME](*args, out)
    return reference.relative_error(out.numpy(), ref)


@contextmanager
def _folder_lock(folder: Path):
    """Excludes other tuning processes from the folder's database while held."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def drop_records(out_folder: Path, problem: Problem, algorithm: str) -> int:
    """Remove `out_folder`'s records of `problem` under `algorithm` (`tune.py --drop`): its
    MetaSchedule record and `meta.json` entry, or a generated algorithm's tile records of the
    layer's shape and density. Returns how many went."""
    with _folder_lock(out_folder):
        if algorithms.by_name(algorithm).generated:
            from . import tile_records

            kernel = problem.sparse_kernel()
            return tile_records.drop(out_folder, algorithm, problem.workload(kernel), int(kernel.nnz))
        return drop_workload(out_folder, problem.workload(algorithm=algorithm))


def _keep_record(out_folder: Path, record, mod, wl, problem, target, best, err, device_name,
                 same_run: tuple[float, float] | None = None) -> str:
    with _folder_lock(out_folder):
        return _write_record(out_folder, record, mod, wl, problem, target, best, err, device_name, same_run)


def _write_record(out_folder: Path, record, mod, wl, problem, target, best, err, device_name,
                  same_run: tuple[float, float] | None = None) -> str:
    """Put the record in the folder's database and its entry in `meta.json` (lock held); returns
    why it was not written ("" when it was).

    One record per workload: re-tuning (`tune.py --force`, e.g. with a new rule) replaces the
    folder's record only when the new one ran faster: timed in turns in this run where `same_run`
    (old, new seconds; `_against_folder_record`) is given, else as their tunings measured them, so
    a re-tune never makes a committed layer slower. A damaged database is repaired first
    (`tuning_records.repair_folder`: good lines kept, the original backed up); a damaged
    `meta.json` refuses (`TuningLogError`) before anything is written.
    """
    meta = read_meta(out_folder) or {}
    old = next((e for e in meta.get("entries", []) if entry_workload(e) == wl), None)
    old_us = old.get("run_us") if isinstance(old, dict) else None
    if old is not None and same_run is not None:
        if same_run[0] <= same_run[1]:
            return (f"the folder's record ({old.get('rule', '?')}) is faster in this run: {same_run[0] * 1e6:.1f} "
                    f"against {same_run[1] * 1e6:.1f} us, timed in turns: kept")
    elif isinstance(old_us, (int, float)) and old_us <= best * 1e6:
        return f"the folder's record ({old.get('rule', '?')}, {old_us:.1f} us) is faster: kept"
    repair_folder(out_folder)
    db = ms.database.JSONDatabase(
        path_workload=str(out_folder / "database_workload.json"),
        path_tuning_record=str(out_folder / "database_tuning_record.json"),
        allow_missing=True,
    )
    db.commit_tuning_record(
        ms.database.TuningRecord(record.trace, db.commit_workload(mod), record.run_secs, target, record.args_info)
    )
    keep_newest_record(out_folder, mod)
    previous = meta.get("tvm_version")
    if previous and previous != tvm.__version__:  # older entries keep the version they were tuned with
        for e in meta.get("entries", []):
            if isinstance(e, dict):
                e.setdefault("tvm_version", previous)
    meta.update(meta_header(target, device_name or meta.get("device_name", "")))
    # An entry that does not parse is kept as it is (it may be someone's record to fix by hand).
    entries = [e for e in meta.get("entries", []) if entry_workload(e) != wl]
    entries.append({
        "problem": problem.name, "workload": wl.to_json(), "rule": rule_of(record.trace),
        "run_us": best * 1e6, "relative_error": err, "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tvm_version": tvm.__version__,
    })
    meta["entries"] = sorted(entries, key=lambda e: str(e.get("problem", "")) if isinstance(e, dict) else "")
    tmp = out_folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out_folder / META_FILE)
    return ""


def tuned_problems(out_folder: Path) -> set[ConvWorkload]:
    meta = read_meta(out_folder) or {}
    return {w for w in map(entry_workload, meta.get("entries", [])) if w is not None}


def tune_in_parallel(
    problems: list[Problem],
    target: Target,
    out_folder: Path,
    trials: int,
    work_root: Path,
    workers: int,
    on_batch: Callable[[str, int, float], None],
    on_done: Callable[[Problem, "TuneResult | BaseException"], None],
    quiet: bool = True,
    **options,
) -> None:
    """Tune `workers` problems at a time, each in its own process (`options` go to `tune_problem`).

    Meant for a tracker with several servers: each process keeps servers busy while the others
    search or build. Local builds are shared out so that the processes together use every core.
    `on_batch(problem_name, n_measured, best_seconds)` and `on_done(problem, result_or_error)` are
    called in this process.
    """
    # Share the cores out: each process searching with every physical core would oversubscribe them.
    options.setdefault("builder_workers", max(1, (os.cpu_count() or 1) // workers))
    options.setdefault("search_threads", max(1, ms.utils.cpu_count(logical=False) // workers))
    ctx = multiprocessing.get_context("spawn")  # TVM's runtime does not survive fork
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        events = manager.Queue()
        futures = {
            pool.submit(_tune_in_worker, p, target.export(), out_folder, trials, work_root, events, quiet, options): p
            for p in problems
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(events, on_batch)
            for fut in done:
                exc = fut.exception()
                on_done(futures[fut], exc if exc is not None else fut.result())
        _drain(events, on_batch)


def _drain(events, on_batch) -> None:
    while True:
        try:
            on_batch(*events.get_nowait())
        except queue_module.Empty:
            return


def _tune_in_worker(problem, target_json, out_folder, trials, work_root, events, quiet, options) -> TuneResult:
    def report(n, best):
        events.put((problem.name, n, best))

    return tune_problem(problem, Target(target_json), out_folder, trials, work_root, on_batch=report, quiet=quiet,
                        **options)

