"""Measuring on other machines through TVM's RPC tracker (the engine TVM ships for distributed tuning).

A tracker (`python -m tvm.exec.rpc_tracker`) holds RPC servers (`python -m tvm.exec.rpc_server
--tracker=HOST:PORT --key=KEY`), one per GPU, all of one GPU model under one key. Candidates are
built on the machine that tunes and measured on whichever server the tracker hands out, through
MetaSchedule's `RPCRunner`. This module knows how to:

- describe the servers' device (`probe`): the target and tuning-log folder come from the servers,
  not from the machine that runs the tuning;
- adapt the problem's real sparse arguments to the RPC runners' signature (`rpc_alloc_argument`;
  the runners are in `tuning_runner.py`);
- run one compiled module on a server, for the correctness check of the winner (`RemoteSite`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
from tvm import rpc
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .targets import cuda_target_from_device, gpu_folder_name

SESSION_TIMEOUT_S = 120  # one candidate's upload, allocation and timing; a stuck kernel is cut here


@dataclass(frozen=True)
class Tracker:
    """Where the tracker listens and which key its servers are registered under."""

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, address: str, key: str) -> "Tracker":
        """`address` is "HOST:PORT" (the form of `rpc_server --tracker=`)."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"tracker address must be HOST:PORT, e.g. 127.0.0.1:9190, got {address!r}")
        if not key:
            raise ValueError("an RPC key is needed: the --key the servers were started with")
        return cls(host, int(port), key)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} key {self.key!r}"

    def connect(self) -> rpc.client.TrackerSession:
        try:
            return rpc.connect_tracker(self.host, self.port)
        except RuntimeError as e:
            raise ConnectionError(f"no RPC tracker at {self.host}:{self.port} ({e}); start one with "
                                  "`python scripts/rpc_cluster.py start` or `python -m tvm.exec.rpc_tracker`") from e

    def servers(self) -> int:
        """Servers registered under the key (free or busy)."""
        info = self.connect().summary()
        queue = info.get("queue_info", {}).get(self.key, {})
        listed = sum(1 for s in info.get("server_info", []) if s.get("key") == f"server:{self.key}")
        return max(listed, int(queue.get("free", 0)))

    def session(self, timeout_s: int = SESSION_TIMEOUT_S) -> rpc.RPCSession:
        """A session on the next free server of the key (waits for one)."""
        if self.servers() == 0:
            raise ConnectionError(f"the tracker at {self.host}:{self.port} has no server with key {self.key!r}; "
                                  f"start one with `python -m tvm.exec.rpc_server --tracker={self.host}:{self.port} "
                                  f"--key={self.key}`")
        return self.connect().request(self.key, priority=1, session_timeout=timeout_s)

    def rpc_config(self, timeout_s: int = SESSION_TIMEOUT_S) -> ms.runner.RPCConfig:
        return ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                                   session_priority=1, session_timeout_sec=timeout_s)


@dataclass(frozen=True)
class RemoteDevice:
    """What the servers of a key run on."""

    target: Target
    device_name: str
    folder_name: str  # tuning_logs/<folder_name>/


def probe(tracker: Tracker) -> RemoteDevice:
    """Ask one server what it runs on: its GPU if it has one, else its CPU."""
    sess = tracker.session(timeout_s=60)
    host_cpu = str(sess.get_function("target.llvm_get_system_cpu")())
    gpu = sess.cuda(0)
    if gpu.exist:
        target = cuda_target_from_device(gpu, host=Target({"kind": "llvm", "mcpu": host_cpu}))
        return RemoteDevice(target, gpu.device_name, gpu_folder_name(gpu.device_name))
    cores = int(sess.get_function("runtime.NumThreads")())
    target = Target({"kind": "llvm", "mcpu": host_cpu, "num-cores": cores})
    return RemoteDevice(target, f"CPU {host_cpu} x{cores}", f"cpu-{host_cpu}")


def rpc_alloc_argument(alloc_arguments: Callable) -> Callable:
    """`alloc_arguments(device, args_info, alloc_repeat)` with RPCRunner's signature (session first)."""

    def alloc(session, device, args_info, alloc_repeat):
        return alloc_arguments(device, args_info, alloc_repeat)

    return alloc


class RemoteSite:
    """Runs a compiled module on a server of the tracker (uploaded as a tar, linked there)."""

    def __init__(self, tracker: Tracker, target: Target):
        self.session = tracker.session()
        self.device = self.session.device("cpu" if target.kind.name == "llvm" else target.kind.name, 0)
        self._tmp = tempfile.TemporaryDirectory(prefix="tvm_sparseconv_rpc_")
        self._n = 0

    def load(self, lib: tvm.runtime.Module) -> tvm.runtime.Module:
        from tvm.support.tar import tar

        path = Path(self._tmp.name) / f"export{self._n}.tar"  # (load_artifact counts it)
        lib.export_library(str(path), fcompile=tar)
        return self.load_artifact(str(path))

    def load_artifact(self, path: str) -> tvm.runtime.Module:
        """An exported library (a builder's tar) uploaded to the server and loaded there."""
        self._n += 1
        name = f"check{self._n}_{Path(path).name}"
        self.session.upload(path, name)
        return self.session.load_module(name)

