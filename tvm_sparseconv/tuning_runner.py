"""MetaSchedule runner for the tracker's servers: one RPC session per share of a batch.

MetaSchedule's `RPCRunner` asks the tracker for a new session for every candidate. The server
serves each session in a new process, which must create its own CUDA context: 0.4 s on an H200
server (`benchmarks/results/rpc-session-nvidia-h200.json`), for kernels that run for microseconds.
On the H200 x2 machine, measuring a workload's 64 candidates so took 37 s of its 51 s
(`benchmarks/results/rpc-tuning-nvidia-h200-64trials-session-per-candidate.json`): the servers'
session starts, not the GPUs, set the pace; one session per share took 2 s
(`...-session-per-batch.json`).

`SessionPerBatchRunner` splits each batch into `max_workers` shares, one per pool worker, and runs
a share in one session: RPCRunner's own steps (upload and load, time evaluator, cleanup), with the
arguments uploaded once per session. A candidate that fails ends its session, since a faulted
kernel can leave the CUDA context unusable, and the share goes on in a new one. A session is also
renewed once it has run for `SESSION_TIMEOUT_S`, so every candidate starts with at least that long
before the server cuts a stuck kernel.
"""

from __future__ import annotations

import json
import os.path
import time
from typing import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner.rpc_runner import default_upload_module
from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common
from tvm.support.popen_pool import PopenPoolExecutor

from .rpc import SESSION_TIMEOUT_S, Tracker, rpc_alloc_argument

SESSION_PER = ("batch", "candidate")  # tracker_runner's choices

# (artifact path, device type, arguments' info as JSON) of one candidate
Job = tuple[str, str, tuple]
# (run seconds, None) or (None, error message)
Outcome = tuple[list[float] | None, str | None]


@derived_object
class _CandidateFuture(ms.runner.PyRunnerFuture):
    """One candidate's result inside its share's future."""

    def __init__(self, share, index: int):
        super().__init__()
        self.share = share
        self.index = index

    def done(self) -> bool:
        return self.share.done()

    def result(self) -> ms.runner.RunnerResult:
        try:
            costs, error = self.share.result()[self.index]
        except Exception as e:  # the pool worker died: every candidate of the share fails
            return ms.runner.RunnerResult(None, f"RPC runner worker failed: {e}")
        return ms.runner.RunnerResult(costs, error)


@derived_object
class SessionPerBatchRunner(ms.runner.PyRunner):
    """MetaSchedule's RPC measuring with one session per share of a batch (see the module docstring)."""

    def __init__(self, rpc_config: ms.runner.RPCConfig, evaluator_config: ms.runner.EvaluatorConfig,
                 f_alloc_argument: Callable, max_workers: int = 1):
        super().__init__()
        self.rpc_config = rpc_config._replace(session_timeout_sec=2 * SESSION_TIMEOUT_S)
        self.evaluator_config = evaluator_config
        self.f_alloc_argument = f_alloc_argument  # RPCRunner's signature: (session, device, args_info, repeat)
        self.max_workers = max_workers
        self.pool = PopenPoolExecutor(max_workers=max_workers)

    def run(self, runner_inputs: list[ms.runner.RunnerInput]) -> list[ms.runner.RunnerFuture]:
        futures: list[ms.runner.RunnerFuture] = []
        size = max(1, -(-len(runner_inputs) // self.max_workers))  # no inputs when every build failed
        for start in range(0, len(runner_inputs), size):
            jobs = [(str(r.artifact_path), str(r.device_type), tuple(a.as_json() for a in r.args_info))
                    for r in runner_inputs[start:start + size]]
            share = self.pool.submit(run_share, self.rpc_config, self.evaluator_config, self.f_alloc_argument, jobs)
            futures.extend(_CandidateFuture(share, i) for i in range(len(jobs)))
        return futures


def run_share(rpc_config: ms.runner.RPCConfig, evaluator_config: ms.runner.EvaluatorConfig,
              f_alloc_argument: Callable, jobs: list[Job]) -> list[Outcome]:
    """Measure `jobs` in as few sessions as the failures and the session timeout allow."""
    outcomes: list[Outcome] = []
    session, opened, arguments = None, 0.0, {}
    for i, (artifact_path, device_type, args_info) in enumerate(jobs):
        if session is not None and time.monotonic() - opened > SESSION_TIMEOUT_S:
            session, arguments = None, {}
        try:
            if session is None:
                session, opened = rpc_config.connect_server(), time.monotonic()
            device = session.device(device_type, 0)
            # Unique per candidate: the server would reuse an already loaded library of the same name.
            remote_path = f"{i}_{os.path.basename(artifact_path)}"
            module = default_upload_module(session, artifact_path, remote_path)
            key = json.dumps(args_info)
            if key not in arguments:
                arguments[key] = f_alloc_argument(session, device, args_info, 1)
            outcomes.append((run_evaluator_common(module, device, evaluator_config, arguments[key]), None))
        except Exception as e:  # noqa: BLE001 -- becomes this candidate's error, as in RPCRunner
            outcomes.append((None, f"RPC runner: an exception occurred\n{e}"))
            session, arguments = None, {}
            continue
        del module
        try:  # a measured time stands even if its files cannot be removed
            for path in (remote_path, remote_path + ".so"):
                session.remove(path)
        except Exception:  # noqa: BLE001 -- the next candidate gets a new session
            session, arguments = None, {}
    return outcomes


def tracker_runner(tracker: Tracker, alloc_arguments: Callable, evaluator_config: ms.runner.EvaluatorConfig,
                   max_workers: int, session_per: str = "batch") -> ms.runner.PyRunner:
    """A runner whose candidates run on the key's servers with the real arguments.

    `alloc_arguments(device, args_info, alloc_repeat)` is the same function the local runner uses;
    on a remote device, `tvm.runtime.tensor` uploads through the session. `session_per="candidate"`
    gives MetaSchedule's own `RPCRunner` (a session for every candidate).
    """
    if session_per not in SESSION_PER:
        raise ValueError(f"session_per must be one of {SESSION_PER}, got {session_per!r}")
    alloc = rpc_alloc_argument(alloc_arguments)
    if session_per == "candidate":
        return ms.runner.RPCRunner(rpc_config=tracker.rpc_config(), evaluator_config=evaluator_config,
                                   f_alloc_argument=alloc, max_workers=max_workers)
    return SessionPerBatchRunner(tracker.rpc_config(), evaluator_config, alloc, max_workers)
