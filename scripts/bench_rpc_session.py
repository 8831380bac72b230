#!/usr/bin/env python
"""Cost of one RPC session (what MetaSchedule's RPCRunner opens per candidate), fork against spawn.

  python scripts/bench_rpc_session.py --repeats 8

A tracker and one CPU server on loopback (rpc_cluster.LocalCluster); each session: request a server,
upload and load a tiny module, run it, read the result back. A server forks a process per session
by default, or spawns one (a new Python that imports TVM) with --no-fork, which GPU servers need
while CUDA is initialised in the server (see rpc_cluster.py). Writes a JSON with every sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8, help="sessions per mode (default 8)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/rpc-session-<cpu>.json)")
    args = ap.parse_args(argv)

    import numpy as np
    import tvm
    from tvm import te
    from tvm.target import Target

    from tvm_sparseconv.rpc import RemoteSite
    from tvm_sparseconv.rpc_cluster import LocalCluster, free_port
    from tvm_sparseconv.targets import host_cpu_target, target_folder_name

    a_ph = te.placeholder((1024,), name="A")
    b = te.compute((1024,), lambda i: a_ph[i] * 2.0, name="B")
    lib = tvm.compile(te.create_prim_func([a_ph, b]), target="llvm")
    result = {"machine": target_folder_name(host_cpu_target()), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "seconds": {}}
    for mode in ("fork", "spawn"):
        samples = []
        with LocalCluster("session-bench", servers=1, port=free_port(), server_port=free_port(),
                          fork_sessions=mode == "fork") as cluster:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                site = RemoteSite(cluster.tracker, Target("llvm"))
                mod = site.load(lib)
                x = tvm.runtime.tensor(np.ones(1024, np.float32), site.device)
                y = tvm.runtime.empty((1024,), "float32", site.device)
                mod["main"](x, y)
                assert float(y.numpy()[0]) == 2.0
                del mod, x, y, site  # closes the session
                samples.append(time.perf_counter() - t0)
        result["seconds"][mode] = samples
        print(f"{mode:<6} median {np.median(samples):.2f} s per session ({args.repeats} sessions)")
    out = args.out or ROOT / "benchmarks" / "results" / f"rpc-session-{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
