"""Tile search for the generated algorithms (register-reuse on CUDA, cpu-register-reuse on CPUs):
what `scripts/tune.py --algorithm <generated>` runs.

A generated algorithm compiles the kernel's values into its code, so there is no TE PrimFunc for
MetaSchedule to schedule: its design space is its emitter's tiles (`schedules/cuda_register_reuse`
and `schedules/cpu_register_reuse`: `TILES`), a few dozen points, small enough to measure them all.
The search builds every tile that fits the layer's compile-time budget (in parallel processes, into
the module cache, where `compile()` later finds the winner), checks each against float64 on a
NaN-poisoned output, times the correct ones, and also the layer under its best scheduled algorithm
(`build.choose_schedule`: MetaSchedule records of the same folder, else the untuned template) in
the same run. The
fastest tile becomes the layer shape's record (`tile_records`) unless that scheduled choice was
faster: `compile()` weighs a tile record against the scheduled algorithms' records of another run,
so a tile that lost in this run would be chosen where it loses. The tiles of the layer's records in
the other folders of this device's family (`family_tiles`) are always among those measured: once
written, an own record outranks theirs in `compile()` (a GPU's weighed 1.5x slower, a CPU's not
weighed at all), so a search of other tiles must not record one slower here than theirs.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tvm
from tvm.target import Target

from . import algorithms, baselines, build, targets, tile_records, verification
from .workload import ConvWorkload
from .workloads import Problem


@dataclass
class TileSearch:
    """One layer's search: per tile its compile seconds, relative error and seconds (or its error);
    the layer's scheduled choice timed beside them; the tile recorded (None: none was)."""

    problem: str
    algorithm: str
    nonzeros: int
    tiles: dict[str, dict] = field(default_factory=dict)
    scheduled: dict = field(default_factory=dict)
    recorded: str | None = None
    family_tiles: dict[str, str] = field(default_factory=dict)  # tile -> the family folder whose record it is
    why_not: str = ""
    seconds: float = 0.0  # the search's wall time

    @property
    def best(self) -> str | None:
        """The fastest tile within the algorithm's tolerance of float64."""
        tolerance = algorithms.by_name(self.algorithm).tolerance
        ok = {n: t for n, t in self.tiles.items() if t.get("relative_error", np.inf) <= tolerance and "seconds" in t}
        return min(ok, key=lambda n: ok[n]["seconds"]) if ok else None

    def as_dict(self) -> dict:
        return {"problem": self.problem, "algorithm": self.algorithm, "nonzeros": self.nonzeros, "tiles": self.tiles,
                "scheduled": self.scheduled, "best": self.best, "recorded": self.recorded,
                "family_tiles": self.family_tiles, "why_not": self.why_not,
                "search_s": self.seconds}


def generated_workload(problem: Problem, algorithm: str, target_kind: str):
    """(kernel, the layer's workload under `algorithm`, as `compile()` computes the layer on
    `target_kind`: `Problem.for_target`); ValueError where the algorithm cannot compute it
    (another target, or over its code-size budget)."""
    alg = algorithms.by_name(algorithm)
    if not alg.generated:
        raise ValueError(f"{algorithm} is not a generated algorithm: tune it with MetaSchedule")
    problem = problem.for_target(target_kind)
    kernel = problem.sparse_kernel()
    wl = algorithms.workload_for(kernel, problem.workload(kernel), algorithm)
    if not alg.applies(wl, target_kind):
        raise ValueError(f"{algorithm} does not compute {problem.name} on {target_kind} "
                         f"({kernel.nnz} nonzeros; its code-size budget or target)")
    return kernel, wl


def winning_tiles(algorithm: str, root: Path | None = None) -> list[str]:
    """The tiles that are some layer's record in any device's folder under `root` (default
    `tuning_logs/`), in the emitter's order: the default search. Searching every tile costs too
    much on large layers (H200, conv4 3x3 batch 32: the 74 register-reuse tiles were not all built
    after 175 s with 16 processes); the records' 23 distinct winners cover what won so far."""
    from .tuning_records import logs_root

    root = root or logs_root()
    won = {r["tile"] for folder in (sorted(root.iterdir()) if root.is_dir() else []) if folder.is_dir()
           for r in tile_records.read(tile_records.path_for(folder, algorithm), algorithm)}
    return [t for t in algorithms.by_name(algorithm).tiles() if t in won]


def candidate_tiles(algorithm: str, wl: ConvWorkload, tiles: Sequence[str] | None = None) -> list[str]:
    """`tiles` that keep `wl`'s code within the compile budget: default `winning_tiles` and the
    layer's default tile (every tile where no record names one); ["all"]: every tile."""
    alg = algorithms.by_name(algorithm)
    known = alg.tiles()
    if tiles and list(tiles) == ["all"]:
        tiles = list(known)
    unknown = [t for t in tiles or () if t not in known]
    if unknown:
        raise ValueError(f"unknown {algorithm} tiles {unknown}; known: {', '.join(known)}")
    if not tiles:
        won = winning_tiles(algorithm)
        tiles = [t for t in known if t in won or t == alg.default_tile(wl)] if won else list(known)
    return [t for t in tiles if alg.fits(wl, known[t])]


def family_tiles(algorithm: str, wl: ConvWorkload, nonzeros: int, target: Target, folder: Path) -> dict[str, str]:
    """{tile: folder name} of `wl`'s shape's `algorithm` record (nearest to `nonzeros`) in each
    folder of another device of `target`'s family (`folder` is this device's), where it still fits
    the layer's compile-time budget."""
    from .tuning_records import family_folders

    alg, found = algorithms.by_name(algorithm), {}
    known = alg.tiles()
    for other, _ in family_folders(target, own=folder.name):
        record = tile_records.find(other, algorithm, wl, nonzeros)
        if record is not None and record["tile"] in known and alg.fits(wl, known[record["tile"]]):
            found.setdefault(record["tile"], other.name)
    return found


def _build_one(job: tuple) -> dict:
    """Worker: build one tile of the problem into the module cache (as `compile()` would)."""
    problem, algorithm, tile, target_text = job
    target = Target(target_text)
    kernel, wl = generated_workload(problem, algorithm, target.kind.name)
    t0 = time.perf_counter()
    try:
        build._build_tile(kernel, wl, target, tile, f"tuning:{algorithm} {tile}", use_disk_cache=True)
    except Exception as e:  # noqa: BLE001 - a tile that does not build is a result of the search
        return {"tile": tile, "error": f"{type(e).__name__}: {str(e)[-300:]}"}
    return {"tile": tile, "compile_s": time.perf_counter() - t0}


def search(problem: Problem, algorithm: str, target: Target, folder: Path, tiles: Sequence[str] | None = None,
           workers: int = 1, repeats: int = 30, record: bool = True,
           on_progress: Callable[[str], None] | None = None) -> TileSearch:
    """Search `algorithm`'s tiles for `problem` on `target` (this machine's device) and, with
    `record`, write the winner into `folder`'s tile records (see the module docstring)."""
    t_start = time.perf_counter()
    say = on_progress or (lambda msg: None)
    kind = target.kind.name
    problem = problem.for_target(kind)
    kernel, wl = generated_workload(problem, algorithm, kind)
    names = candidate_tiles(algorithm, wl, tiles)
    if not names:
        raise ValueError(f"no {algorithm} tile fits {problem.name}'s compile-time budget")
    result = TileSearch(problem.name, algorithm, int(kernel.nnz))
    result.family_tiles = family_tiles(algorithm, wl, int(kernel.nnz), target, folder)
    names += [t for t in result.family_tiles if t not in names]
    if result.family_tiles:
        say("also timing the family's records: " + ", ".join(f"{t} ({f})" for t, f in result.family_tiles.items()))
    jobs = [(problem, algorithm, t, str(target)) for t in names]
    say(f"building {len(jobs)} tiles ({workers} at a time)")
    if workers > 1:
        # register-reuse compiles long code in pieces in its own child processes: share the CPUs
        os.environ.setdefault("TVM_SPARSECONV_COMPILE_WORKERS", str(max(1, (os.cpu_count() or 1) // workers)))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            built = list(pool.map(_build_one, jobs))
    else:
        built = [_build_one(j) for j in jobs]
    dev = build.device_for(target)
    xs = baselines.rotated_inputs(wl.input_shape, dev)  # one rotation for every tile
    runs = {}
    for b in built:
        result.tiles[b["tile"]] = {k: v for k, v in b.items() if k != "tile"}
        if "error" in b:
            continue
        res = build._build_tile(kernel, wl, target, b["tile"], "", use_disk_cache=True)  # from the cache
        err = verification.check_generated(res.function, kernel, wl, dev)
        result.tiles[b["tile"]]["relative_error"] = err
        if err <= algorithms.by_name(algorithm).tolerance:
            runs[b["tile"]] = rotated_runner(res.function, wl, dev, algorithms.pack_weights(wl, kernel),
                                             wl.has_bias, xs)
    say(f"timing {len(runs)} correct tiles and the scheduled choice")
    with warnings.catch_warnings():  # the schedule source says "untuned" where it is
        warnings.simplefilter("ignore", build.UntunedWarning)
        chosen = build.build(algorithms.workloads_for(kernel, problem.workload(kernel), kind), target, folder=folder)
    result.scheduled = {"algorithm": chosen.workload.algorithm, "schedule": chosen.schedule_source}
    weights = algorithms.pack_weights(chosen.workload, kernel)
    # (on CPUs a strided layer's choice may run on its input's stride phases: another input shape)
    same = tuple(chosen.workload.input_shape) == tuple(wl.input_shape)
    runs["<scheduled>"] = rotated_runner(chosen.function, chosen.workload, dev, weights, wl.has_bias,
                                         xs if same else None)
    times = _median_seconds(list(runs.values()), kind == "cuda", repeats)
    for name, secs in zip(runs, times):
        if name == "<scheduled>":
            result.scheduled["seconds"] = secs
        else:
            result.tiles[name]["seconds"] = secs
    result.seconds = time.perf_counter() - t_start
    best = result.best
    if best is None:
        result.why_not = "no tile built and computed correctly"
    elif result.scheduled["seconds"] < result.tiles[best]["seconds"]:
        result.why_not = (f"the best tile {best} ({result.tiles[best]['seconds'] * 1e6:.1f} us) is slower than "
                          f"{result.scheduled['schedule']} ({result.scheduled['seconds'] * 1e6:.1f} us) in this run")
    elif record:
        new = tile_record(result, wl)
        old = tile_records.find(folder, algorithm, wl, int(kernel.nnz))
        if tile_records.keeps(old, new, measured=result.tiles):
            result.why_not = (f"kept the record {old['tile']} ({old['seconds'] * 1e6:.1f} us, same code, "
                              "not measured here)")
        else:
            from .tuning_records import ensure_meta

            ensure_meta(folder, target, targets.device_name(target))  # other devices of its family then find it
            tile_records.merge(folder, algorithm, targets.device_name(target), "scripts/tune.py", [new])
            result.recorded = best
    return result


def tile_record(result: TileSearch, wl: ConvWorkload, tuned_at: str | None = None) -> dict:
    """The record of `result`'s best tile for layer `wl` (as `search` writes it into the tuning
    logs; `tuned_at` default now)."""
    best = result.best
    return {"layer": result.problem, "shape": tile_records.shape_key(wl), "tile": best,
            "seconds": result.tiles[best]["seconds"], "nonzeros": int(result.nonzeros),
            "library_seconds": result.scheduled["seconds"],
            "emitter_version": algorithms.by_name(result.algorithm).emitter_version,
            "tuned_at": tuned_at or time.strftime("%Y-%m-%d %H:%M:%S")}


def rotated_runner(function, wl: ConvWorkload, dev, weights: Sequence[np.ndarray] = (), with_bias: bool = False,
                   xs: Sequence | None = None):
    """fn(i): `function` (a layer's compiled kernel) called once on the i-th of a rotation of random
    inputs larger than the L2 cache (`xs`: a rotation of `wl`'s input shape made already,
    `baselines.rotated_inputs`), as the tile search and the experiments time a kernel."""
    rest = [tvm.runtime.tensor(np.asarray(w), dev) for w in weights]
    if with_bias:
        rest.append(tvm.runtime.tensor(np.random.default_rng(1).standard_normal(wl.out_channels).astype(np.float32),
                                       dev))
    out = tvm.runtime.empty(wl.output_shape, "float32", dev)
    xs = baselines.rotated_inputs(wl.input_shape, dev) if xs is None else xs
    return baselines.rotated_calls(function, xs, rest, out)


def _median_seconds(fns: list, on_gpu: bool, repeats: int) -> list[float]:
    """Device time per call on a GPU (CUDA events), each in turn; wall time on a CPU, in turns."""
    if on_gpu:
        return [baselines.cuda_event_median(fn, repeats) for fn in fns]
    return baselines.interleaved_median_wall(fns, repeats)
