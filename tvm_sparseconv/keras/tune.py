"""`tune_layers(model)`: tune the sparse Conv2D layers of a Keras model for this machine.

Each Conv2D that `sparsify` could convert is tuned on its real sparsity pattern and input shape
(batch `batch_size`), with MetaSchedule (`tvm_sparseconv.tuning`), into this device's tuning-log
folder; `sparsify` and `SparseConv2D` then find the records. Already tuned layers are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def tune_layers(model, trials: int = 64, batch_size: int = 1, min_sparsity: float = 0.5, target=None,
                work_dir: Path | None = None, verbose: bool = True) -> list[TuneResult]:
    """Tune every layer `sparsify` would consider, for `target` (default: this CPU, or the GPU)."""
    tgt = resolve_target(target)
    folder = logs_root() / target_folder_name(tgt)
    work = work_dir or Path.home() / ".cache" / "tvm_sparseconv" / "tuning" / target_folder_name(tgt)
    done = tuned_problems(folder)
    results = []
    for problem in layer_problems(model, batch_size, min_sparsity):
        problem = problem.for_target(tgt.kind.name)  # as compile() computes it there
        if problem.workload() in done:
            if verbose:
                print(f"{problem.name}: already tuned in {folder}")
            continue
        res = tune_problem(problem, tgt, folder, trials, work, quiet=True)
        if verbose:
            print(f"{problem.name}: best {res.best_seconds * 1e3:.3f} ms ({res.rule}), "
                  f"{res.tuning_seconds:.0f} s of tuning")
        results.append(res)
    return results
