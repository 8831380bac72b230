"""Start and stop TVM's own RPC tracker and servers on this machine: one server per GPU.

The processes are TVM's (`python -m tvm.exec.rpc_tracker`, `python -m tvm.exec.rpc_server`);
this module only launches them with the right arguments, waits until the tracker sees every
server, and stops them all (`LocalCluster` is a context manager, `scripts/rpc_cluster.py` the CLI).
Each GPU server sees one GPU (`CUDA_VISIBLE_DEVICES`), so candidates never share a GPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .rpc import Tracker

#: ports each RPC server of a local cluster may scan (its own range, from `server_port`)
SERVER_PORTS = 20


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_gpu_count() -> int:
    """GPUs visible to TVM on this machine."""
    import tvm

    if not tvm.runtime.enabled("cuda"):
        return 0
    n = 0
    while tvm.cuda(n).exist:
        n += 1
    return n


@dataclass
class LocalCluster:
    """A tracker and `servers` RPC servers under `key` on this machine.

    `gpus`: one server per listed GPU index (each sees only its GPU); when empty, `servers` CPU
    servers. `host` is where everything listens: 127.0.0.1 keeps it on this machine; use the
    machine's address (and start remote servers with `--tracker=HOST:PORT`) for several machines.
    `fork_sessions`: run each session in a forked process (0.4 s on an H200 server) or a spawned
    one (a fresh Python importing TVM: 6 s there; `benchmarks/results/rpc-session-*.json`).
    """

    key: str
    gpus: list[int] = field(default_factory=list)
    servers: int = 0
    host: str = "127.0.0.1"
    port: int = 9190
    server_port: int = 9090
    log_dir: Path | None = None
    fork_sessions: bool = True
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def tracker(self) -> Tracker:
        return Tracker(self.host, self.port, self.key)

    @property
    def server_count(self) -> int:
        return len(self.gpus) or self.servers

    def start(self, timeout_s: float = 60) -> "LocalCluster":
        """Launch the tracker, then the servers; return once the tracker lists all of them."""
        if self.server_count < 1:
            raise ValueError("a cluster needs at least one server: give gpus=[...] or servers=N")
        try:
            self._spawn("tracker", ["tvm.exec.rpc_tracker", f"--host={self.host}", f"--port={self.port}",
                                    f"--port-end={self.port + 1}"], {})
            self._wait_for_tracker(timeout_s)
            for i in range(self.server_count):
                env = {"CUDA_VISIBLE_DEVICES": str(self.gpus[i])} if self.gpus else {"CUDA_VISIBLE_DEVICES": ""}
                # Where PyTorch is installed, tvm_ffi's import calls torch.cuda.is_available(), which
                # initialises CUDA in the server; every forked session then fails with
                # cudaErrorInitializationError. With the hook off, forked sessions work (H200).
                env["TVM_FFI_DISABLE_TORCH_C_DLPACK"] = "1"
                # Each server scans its own ports: servers started together on one range raced for
                # the same port (both bound it, the second's listen() failed: EADDRINUSE, CI 2026-12-02).
                first = self.server_port + SERVER_PORTS * i
                self._spawn(f"server{i}", [
                    "tvm.exec.rpc_server", f"--host={self.host}", f"--port={first}",
                    f"--port-end={first + SERVER_PORTS}", f"--tracker={self.host}:{self.port}",
                    f"--key={self.key}", *([] if self.fork_sessions else ["--no-fork"]),
                ], env)
            self._wait_for_servers(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this cluster started (servers first), also after a failure."""
        for proc in reversed(self.processes):
            stop_process(proc.pid, proc)
        self.processes.clear()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------------
    def _spawn(self, name: str, module_args: list[str], env: dict[str, str]) -> None:
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", *module_args], env={**os.environ, **env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own group: stop() kills it whole
        )
        self.processes.append(proc)

    def _wait_for_tracker(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self._check_alive()
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the RPC tracker did not listen on {self.host}:{self.port} within {timeout_s:.0f} s")

    def _wait_for_servers(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self._check_alive()
            if self.tracker.servers() >= self.server_count:
                return
            time.sleep(0.3)
        raise TimeoutError(f"only {self.tracker.servers()} of {self.server_count} RPC servers registered "
                           f"with key {self.key!r} within {timeout_s:.0f} s")

    def _check_alive(self) -> None:
        for proc in self.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(proc.args[2:4])} exited with code {proc.returncode}"
                                   + (f" (logs in {self.log_dir})" if self.log_dir else ""))


def stop_process(pid: int, proc: subprocess.Popen | None = None, grace_s: float = 5) -> None:
    """SIGTERM the process group of `pid`, SIGKILL it if still there after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if proc is not None:
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            deadline = time.time() + wait_s
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                break


def _alive(pid: int) -> bool:
    """Running (a zombie, which an init that does not reap may leave, counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
