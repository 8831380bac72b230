"""`tune_layers(model)`: tune the sparse Conv2D layers of a Keras model for this machine.

Each Conv2D that `sparsify` could convert is tuned on its real sparsity pattern and input shape
(batch `batch_size`), with MetaSchedule (`tvm_sparseconv.tuning`), into this device's tuning-log
folder; `sparsify` and `SparseConv2D` then find the records. Already tuned layers are skipped.
Where the untuned default is a generated algorithm (CPUs: cpu-csr, whose default tile beat tuned
MetaSchedule records on every shape measured), its tiles are then searched too
(`tile_tuning.search`, against the new record), so that a MetaSchedule record never displaces a
faster untuned default.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import tile_tuning
from ..algorithms import by_name, untuned_default
from ..targets import resolve_target, target_folder_name
from ..tuning import TuneResult, tune_problem, tuned_problems
from ..tuning_records import logs_root
from ..workloads import Problem
from ._flavour import keras_of
from .layer import sparse_conv2d_class
from .sparsify import layer_input_shape, unsupported_reason


def layer_problems(model, batch_size: int = 1, min_sparsity: float = 0.5) -> list[Problem]:
    """The tuning problem of each convertible, sparse-enough Conv2D with a known input size."""
    keras = keras_of(model)
    layer_cls = sparse_conv2d_class(keras)
    problems = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D) or unsupported_reason(layer):
            continue
        w = np.asarray(layer.kernel.numpy())
        shape = layer_input_shape(layer)
        if 1 - np.count_nonzero(w) / w.size < min_sparsity or shape is None or None in shape[1:]:
            continue
        problems.append(layer_cls.from_conv2d(layer).tuning_problem((batch_size, *shape[1:])))
    return problems


def _shape_key(wl):
    """A workload without its ELL width: the layers one record serves (records are matched to the
    nearest ELL width of the shape, `tuning_records.find_tuned_schedule`)."""
    return replace(wl, ell_width=0)


def tune_layers(model, trials: int = 64, batch_size: int = 1, min_sparsity: float = 0.5, target=None,
                work_dir: Path | None = None, verbose: bool = True, per_shape: bool = False,
                untuned_only: bool = False) -> list[TuneResult]:
    """Tune every layer `sparsify` would consider, for `target` (default: this CPU, or the GPU).
    `per_shape`: only the first layer of each shape (ResNet-50: 20 shapes in 53 layers), whose
    record then serves the others of the shape. `untuned_only`: skip the layers `compile()` finds
    a record for already (`build.has_record`: also another algorithm's, or another CPU's of the
    ISA family). On a CPU this matters: a record of its own hides the family's records of the
    layer, also a faster algorithm's (`build.choose_generated`)."""
    from ..build import has_record

    tgt = resolve_target(target)
    folder = logs_root() / target_folder_name(tgt)
    work = work_dir or Path.home() / ".cache" / "tvm_sparseconv" / "tuning" / target_folder_name(tgt)
    done = tuned_problems(folder)
    shapes = {_shape_key(w) for w in done}
    results = []
    for problem in layer_problems(model, batch_size, min_sparsity):
        problem = problem.for_target(tgt.kind.name)  # as compile() computes it there
        wl = problem.workload()
        if wl in done or (per_shape and _shape_key(wl) in shapes):
            if verbose:
                print(f"{problem.name}: already tuned in {folder}" + (" (its shape)" if wl not in done else ""))
            continue
        if untuned_only and has_record(problem.sparse_kernel(), wl, tgt):
            if verbose:
                print(f"{problem.name}: compile() finds a record already")
            continue
        done.add(wl)
        shapes.add(_shape_key(wl))
        res = tune_problem(problem, tgt, folder, trials, work, quiet=True)
        if verbose:
            print(f"{problem.name}: best {res.best_seconds * 1e3:.3f} ms ({res.rule}), "
                  f"{res.tuning_seconds:.0f} s of tuning")
        results.append(res)
        default = by_name(untuned_default(wl, tgt.kind.name))  # an algorithm that computes wl
        if default.generated:
            found = tile_tuning.search(problem, default.name, tgt, folder)
            if verbose:
                print(f"{problem.name}: {default.name} tile {found.recorded or found.best}: "
                      + ("recorded" if found.recorded else f"not recorded ({found.why_not})"))
    return results
