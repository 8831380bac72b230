"""The pooled candidate builder: builds in kept processes, reports a failing build as that candidate's error."""

from __future__ import annotations

import os

import numpy as np

import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tvm_sparseconv.tuning_builder import pooled_builder


def _double(gpu_threads: bool = False, n: int = 64) -> tvm.IRModule:
    a = te.placeholder((n,), name="A")
    b = te.compute((n,), lambda i: a[i] * 2.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    if gpu_threads:
        sch.bind(sch.get_loops(sch.get_sblock("B"))[0], "threadIdx.x")
    return sch.mod


def test_pool_is_kept_and_a_failing_build_is_reported_not_raised():
    first, second = pooled_builder(2), pooled_builder(2)
    assert first.pool is second.pool  # one pool per process and size, not one per workload

    # A loop bound to GPU threads cannot be built for the CPU: that candidate's build fails.
    llvm = Target("llvm")
    inputs = [ms.builder.BuilderInput(_double(), llvm), ms.builder.BuilderInput(_double(gpu_threads=True), llvm)]
    for _ in range(2):  # the second batch reuses the same workers
        good, bad = first.build(inputs)
        assert good.error_msg is None and os.path.isfile(good.artifact_path)
        assert bad.artifact_path is None and "build failed" in bad.error_msg
        lib = tvm.runtime.load_module(good.artifact_path)
        x = tvm.runtime.tensor(np.arange(64, dtype="float32"))
        y = tvm.runtime.empty((64,), "float32")
        lib["main"](x, y)
        assert float(y.numpy()[5]) == 10.0
