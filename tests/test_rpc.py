"""Tuning through TVM's RPC tracker, on loopback: a tracker and two CPU servers on 127.0.0.1.

The real thing, not a mock: `scripts/tune.py --rpc` builds here, measures on the servers the
tracker hands out (with the real sparse arguments uploaded), checks the winner on a server and
writes the database; the processes are stopped at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

import tvm_sparseconv as tsc
from tvm_sparseconv.rpc import Tracker, probe
from tvm_sparseconv.rpc_cluster import LocalCluster, free_port
from tvm_sparseconv.tuning_records import read_meta
from tvm_sparseconv.workloads import TINY

from conftest import reference_conv, rel_err, run_poisoned

ROOT = Path(__file__).resolve().parent.parent
KEY = "tsc-test-cpu"


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(KEY, servers=2, port=free_port(), server_port=free_port(), log_dir=tmp_path / "rpc_logs")
    with c:
        procs = list(c.processes)
        yield c
    assert all(p.poll() is not None for p in procs), "a tracker or server outlived the cluster"


def test_tracker_address_is_checked():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Tracker.parse("localhost", KEY)
    with pytest.raises(ValueError, match="key"):
        Tracker.parse("127.0.0.1:9190", "")
    with pytest.raises(ConnectionError, match="no RPC tracker"):
        Tracker("127.0.0.1", free_port(), KEY).servers()


def test_cluster_processes_are_stopped_when_the_body_fails(tmp_path):
    c = LocalCluster(KEY, servers=1, port=free_port(), server_port=free_port())
    with pytest.raises(RuntimeError, match="boom"):
        with c:
            procs = list(c.processes)
            assert len(procs) == 2 and c.tracker.servers() == 1
            raise RuntimeError("boom")
    assert all(p.poll() is not None for p in procs)


def test_rpc_cluster_cli_start_status_stop(tmp_path):
    env = {**os.environ, "TVM_SPARSECONV_CACHE": str(tmp_path)}
    script = [sys.executable, str(ROOT / "scripts" / "rpc_cluster.py")]
    port = str(free_port())

    def cli(*args):
        return subprocess.run(script + list(args), capture_output=True, text=True, timeout=120, env=env)

    try:
        started = cli("start", "--key", KEY, "--cpu-servers", "2", "--port", port, "--logs", str(tmp_path / "logs"))
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ready" in started.stdout
        again = cli("start", "--key", KEY, "--cpu-servers", "1", "--port", str(free_port()))
        assert again.returncode == 1 and "stop" in again.stderr
        status = cli("status")
        assert status.returncode == 0 and KEY in status.stdout and f"127.0.0.1:{port}" in status.stdout
        pids = json.loads((tmp_path / "rpc_cluster.json").read_text())["pids"]
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (tmp_path / "rpc_cluster.json").exists()
    for pid in pids:  # gone, or a zombie waiting for a parent that does not reap (some containers)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_servers_describe_their_device(cluster):
    remote = probe(cluster.tracker)
    assert remote.target.kind.name == "llvm"  # the servers hide every GPU
    assert remote.folder_name.startswith("cpu-") and cluster.tracker.servers() == 2


def test_tune_through_the_tracker_writes_records_compile_uses(cluster, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--workloads", "tiny", "--trials", "8",
           "--rpc", f"{cluster.host}:{cluster.port}", "--key", KEY, "--out", str(logs / "remote"),
           "--work-dir", str(tmp_path / "work"), "--summary-json", str(summary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(summary.read_text())
    assert result["workers"] == 2 and result["rpc"]["servers"] == 2
    assert {r["problem"] for r in result["workloads"]} == {p.name for p in TINY}
    assert all(r["relative_error"] <= 1e-5 for r in result["workloads"])
    # the untuned templates, built on the local pool, ran on a server beside the search's best
    assert all(any(label != "search" for label in r["candidates_us"]) for r in result["workloads"]), result
    meta = read_meta(logs / "remote")
    assert {e["problem"] for e in meta["entries"]} == {p.name for p in TINY}
    assert meta["target"]["kind"] == "llvm"
    # Both servers measured candidates (each logs the modules it loads).
    for i in range(2):
        assert "load_module" in (cluster.log_dir / f"server{i}.log").read_text(), f"server{i} measured nothing"

    # The records serve compile() on this machine (same CPU as the servers).
    (logs / "remote").rename(logs / tsc.targets.target_folder_name(tsc.targets.host_cpu_target()))
    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(logs))
    for problem in TINY:
        kernel = problem.sparse_kernel()
        with warnings.catch_warnings():
            warnings.simplefilter("error", tsc.UntunedWarning)
            op = tsc.compile(kernel, problem.input_shape, problem.strides, problem.padding, target="cpu")
        assert op.tuned
        x = np.random.default_rng().standard_normal(problem.input_shape).astype(np.float32)
        ref = reference_conv(x, kernel.to_dense(), problem.strides, problem.padding)
        assert rel_err(run_poisoned(op, x), ref) <= 1e-5
