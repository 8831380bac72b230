"""MetaSchedule builder for our candidates: worker processes that outlive a batch.

MetaSchedule's `LocalBuilder` starts a fresh pool of processes for every batch of candidates, and
one more for a sanity check when it is created: each process is a new Python importing TVM (and
PyTorch, when it is installed, through tvm_ffi), seconds of CPU for every batch of every workload.
Tuning many workloads pays that again and again, on the cores the search and the builds need.
`pooled_builder` keeps one pool per process instead; each worker is replaced after
`MAX_USES_PER_WORKER` builds, which bounds the memory growth that made MetaSchedule restart its
pools.

The build itself is MetaSchedule's, minus its `import tvm.s_tir.tensor_intrin` (20-60 s in each
fresh worker, unused by our schedules), which with the default 30 s timeout failed every candidate.
"""

from __future__ import annotations

import atexit
import os

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import local_builder as _local
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind
from tvm.target import Target

BUILD_TIMEOUT_S = 120.0
MAX_USES_PER_WORKER = 32


def build_without_tensor_intrinsics(mod: tvm.IRModule, target: Target, _params=None):
    """MetaSchedule's default build minus its `import tvm.s_tir.tensor_intrin` (unused here)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from .tir_build import PIPELINE

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=PIPELINE)


@derived_object
class PooledBuilder(ms.builder.PyBuilder):
    """`LocalBuilder`'s work on a pool that is kept between batches (see the module docstring)."""

    def __init__(self, pool: PopenPoolExecutor, timeout_sec: float):
        super().__init__()
        self.pool = pool
        self.timeout_sec = timeout_sec

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        jobs = [(build_without_tensor_intrinsics, None, b.mod, b.target, _local._serialize_params(b.params))
                for b in build_inputs]
        results = []
        for res in self.pool.map_with_error_catching(lambda job: _local._worker_func(*job), jobs):
            if res.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(res.value, None))
            elif res.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed:\n{res.value}"))
        return results


_pools: dict[int, PopenPoolExecutor] = {}


@atexit.register
def _shut_pools() -> None:
    """Stop the build processes with the tuning process instead of leaving them to the OS."""
    for pool in _pools.values():
        pool.shutdown()
    _pools.clear()


def pooled_builder(max_workers: int | None = None, start_now: bool = False) -> PooledBuilder:
    """A builder on this process's pool of `max_workers` build processes (default: all cores).

    The first batch starts the pool's processes (a Python importing TVM each). `start_now=True`
    starts them in the background when the pool is made, to overlap the first search round; on
    the 2-core CPU the first workload was no faster that way (21-22 s either way,
    `benchmarks/experiments/tuning_builder_pool-start-now.json`), so it stays off until measured
    on a machine with cores to spare.
    """
    workers = max_workers or os.cpu_count() or 1
    if workers not in _pools:
        pool = PopenPoolExecutor(max_workers=workers, timeout=BUILD_TIMEOUT_S, maximum_process_uses=MAX_USES_PER_WORKER)
        if start_now:
            _start_workers(pool, workers)
        _pools[workers] = pool
    return PooledBuilder(_pools[workers], BUILD_TIMEOUT_S)


def _start_workers(pool: PopenPoolExecutor, workers: int) -> None:
    """Start every process of `pool` now, without waiting, each importing what builds need.

    The pool creates a thread (and its process) for each task submitted while none is idle, so
    `workers` tasks submitted together start `workers` processes.
    """
    for _ in range(workers):
        pool.submit(_import_build_modules)


def _import_build_modules() -> None:
    """Run in a new worker: what every build needs, imported before the first build arrives."""
    import tvm.driver  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401
