"""The RPC runner that measures a share of a batch in one session, on loopback CPU servers.

Real servers and a real tracker (no mocks). The checks: every candidate is timed with its own
module (the server would reuse a loaded library of the same name), fewer sessions are opened than
MetaSchedule's `RPCRunner` opens for the same batch, and a candidate that fails is that candidate's
error while the rest of its share is still measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.support.tar import tar

from tvm_sparseconv.rpc_cluster import LocalCluster, free_port
from tvm_sparseconv.tuning import make_alloc_argument
from tvm_sparseconv.tuning_runner import tracker_runner

N = 4096
KEY = "tsc-test-runner"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("rpc_logs")
    with LocalCluster(KEY, servers=2, port=free_port(), server_port=free_port(), log_dir=log_dir) as c:
        yield c


def artifact(folder: Path, rounds: int) -> str:
    """A module whose run time grows with `rounds`, exported as MetaSchedule's builder does (same file name)."""
    a = te.placeholder((N,), name="A")
    r = te.reduce_axis((0, rounds), name="r")
    b = te.compute((N,), lambda i: te.sum(a[i] * r.astype("float32"), axis=r), name="B")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target="llvm")
    folder.mkdir(parents=True)
    path = folder / "tvm_tmp_mod.tar"
    lib.export_library(str(path), fcompile=tar)
    return str(path)


def sessions_opened(cluster) -> int:
    return sum((cluster.log_dir / f"server{i}.log").read_text().count("connected from") for i in range(2))


def measure(cluster, session_per: str, paths: list[str]) -> list[ms.runner.RunnerResult]:
    arrays = [np.random.default_rng().standard_normal(N).astype(np.float32)]
    config = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=0, enable_cpu_cache_flush=False)
    runner = tracker_runner(cluster.tracker, make_alloc_argument(arrays), config, max_workers=2,
                            session_per=session_per)
    info = [ms.arg_info.TensorInfo("float32", [N]), ms.arg_info.TensorInfo("float32", [N])]
    try:
        futures = runner.run([ms.runner.RunnerInput(p, "cpu", info) for p in paths])
        return [f.result() for f in futures]
    finally:
        runner._inst.pool.shutdown()


def test_share_in_one_session_times_each_candidate_and_survives_a_failure(cluster, tmp_path):
    light, heavy = artifact(tmp_path / "light", 1), artifact(tmp_path / "heavy", 4000)
    missing = str(tmp_path / "missing" / "tvm_tmp_mod.tar")
    paths = [light, missing, heavy, heavy, light, heavy]

    before = sessions_opened(cluster)
    results = measure(cluster, "batch", paths)
    batch_sessions = sessions_opened(cluster) - before

    assert results[1].run_secs is None and "missing" in results[1].error_msg
    ok = [r for i, r in enumerate(results) if i != 1]
    assert all(r.error_msg is None and r.run_secs for r in ok), [r.error_msg for r in ok]
    secs = [min(float(s) for s in r.run_secs) for r in results if r.run_secs]
    light_s, heavy_s = [secs[i] for i in (0, 3)], [secs[i] for i in (1, 2, 4)]  # paths without the missing one
    # 4000 rounds against 1: each candidate ran its own module, not an earlier one of the same name.
    assert min(heavy_s) > 20 * max(light_s), secs
    # Two shares of three, plus a new session after the failure in the middle of the first.
    assert batch_sessions == 3

    assert measure(cluster, "batch", []) == []  # a batch whose every build failed reaches the runner empty

    before = sessions_opened(cluster)
    results = measure(cluster, "candidate", paths)
    assert sessions_opened(cluster) - before == len(paths)  # MetaSchedule's RPCRunner: one per candidate
    assert [r.error_msg is None for r in results] == [True, False, True, True, True, True]
