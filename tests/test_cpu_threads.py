"""TVM's CPU thread pool uses every physical core once tvm_sparseconv is imported.

TVM's own default is half the logical CPUs on x86; on a VM without hyper-threads (this project's
2-core machines) every CPU kernel ran on one core. Each case runs in a fresh process: the pool
reads its size once, when it is first created.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

PROBE = ("import tvm_sparseconv, tvm; "
         "print(tvm.get_global_func('runtime.NumThreads')())")


def _threads(**env) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    clean["TVM_SPARSECONV_NO_TF_OP"] = "1"  # the op is not what this is about (and slow to import)
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True,
                         timeout=300, check=True)
    return int(out.stdout.split()[-1])


def test_the_pool_uses_every_physical_core():
    assert _threads() == (psutil.cpu_count(logical=False) or os.cpu_count())


@pytest.mark.parametrize("var", ["TVM_NUM_THREADS", "OMP_NUM_THREADS"])
def test_a_users_thread_count_wins(var):
    assert _threads(**{var: "1"}) == 1


def _spin(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
    clean["TVM_SPARSECONV_NO_TF_OP"] = "1"
    probe = "import os, tvm_sparseconv; print(os.environ['TVM_THREAD_POOL_SPIN_COUNT'])"
    out = subprocess.run([sys.executable, "-c", probe], env=clean | env, capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout.split()[-1]


def test_idle_workers_sleep_unless_the_user_says_otherwise():
    """Spinning TVM workers stole cores from TensorFlow's ops inside a model (README, CPU threads)."""
    assert _spin() == "0"
    assert _spin(TVM_THREAD_POOL_SPIN_COUNT="300000") == "300000"
