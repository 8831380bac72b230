#!/usr/bin/env python
"""Cost of one RPC session (what MetaSchedule's RPCRunner opens per candidate), fork against spawn.

  python scripts/bench_rpc_session.py --repeats 8          # a CPU server
  python scripts/bench_rpc_session.py --gpu --repeats 5    # a server on GPU 0

A tracker and one server on loopback (rpc_cluster.LocalCluster); each session: request a server,
upload and load a tiny module, run it on the server's device, read the result back. A server forks
a process per session by default, or spawns one (a new Python that imports TVM) with --no-fork.
Forked sessions fail on a GPU if CUDA was initialised in the server before the fork (see
rpc_cluster.py); a mode whose sessions fail is recorded with its error. Writes a JSON with every
sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N = 1024


def tiny_module(target):
    """B = 2 * A on `target` (threads bound on a GPU)."""
    import tvm
    from tvm import te

    a_ph = te.placeholder((N,), name="A")
    b = te.compute((N,), lambda i: a_ph[i] * 2.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a_ph, b]))
    if target.kind.name == "cuda":
        outer, inner = sch.split(sch.get_loops(sch.get_sblock("B"))[0], [None, 128])
        sch.bind(outer, "blockIdx.x")
        sch.bind(inner, "threadIdx.x")
    return tvm.compile(sch.mod, target=target)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8, help="sessions per mode (default 8)")
    ap.add_argument("--gpu", action="store_true", help="a server on GPU 0 instead of a CPU server")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/rpc-session-<cpu or gpu>.json)")
    args = ap.parse_args(argv)

    import numpy as np
    import tvm

    from tvm_sparseconv.rpc import RemoteSite, probe
    from tvm_sparseconv.rpc_cluster import LocalCluster, free_port
    from tvm_sparseconv.targets import host_cpu_target, target_folder_name

    devices = dict(gpus=[0]) if args.gpu else dict(servers=1)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": {}, "errors": {}}
    for mode in ("fork", "spawn"):
        samples = []
        with LocalCluster("session-bench", **devices, port=free_port(), server_port=free_port(),
                          fork_sessions=mode == "fork") as cluster:
            if "machine" not in result:
                remote = probe(cluster.tracker)
                target = remote.target if args.gpu else host_cpu_target()
                result.update(machine=remote.folder_name if args.gpu else target_folder_name(target),
                              device=remote.device_name)
                lib = tiny_module(target)
            try:
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    site = RemoteSite(cluster.tracker, target)
                    mod = site.load(lib)
                    x = tvm.runtime.tensor(np.ones(N, np.float32), site.device)
                    y = tvm.runtime.empty((N,), "float32", site.device)
                    mod["main"](x, y)
                    if float(y.numpy()[0]) != 2.0:
                        raise RuntimeError(f"wrong result {y.numpy()[:4]} on {site.device}")
                    del mod, x, y, site  # closes the session
                    samples.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a mode that cannot run is a result too
                result["errors"][mode] = f"{type(e).__name__}: {e}"[:2000]
                print(f"{mode:<6} FAILED after {len(samples)} session(s): {result['errors'][mode][:300]}")
        result["seconds"][mode] = samples
        if samples:
            print(f"{mode:<6} median {np.median(samples):.2f} s per session ({len(samples)} sessions)")
    out = args.out or ROOT / "benchmarks" / "results" / f"rpc-session-{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results in {out}")
    return 0 if all(result["seconds"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
