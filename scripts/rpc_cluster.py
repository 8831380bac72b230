#!/usr/bin/env python
"""Start, inspect and stop TVM's RPC tracker with one RPC server per local GPU, for tuning.

  python scripts/rpc_cluster.py start --key h100              # tracker on :9190, a server per GPU
  python scripts/rpc_cluster.py status                        # what the tracker holds
  python scripts/tune.py --workloads sweeps --rpc 127.0.0.1:9190 --key h100
  python scripts/rpc_cluster.py stop

`start` leaves the processes running in the background (their ids go to a state file that `stop`
reads); `--foreground` keeps them until Ctrl-C instead. The processes are TVM's own
(`python -m tvm.exec.rpc_tracker`, `python -m tvm.exec.rpc_server`). To add another machine's GPUs,
run there, once per GPU: `TVM_FFI_DISABLE_TORCH_C_DLPACK=1 CUDA_VISIBLE_DEVICES=i python -m
tvm.exec.rpc_server --tracker=THIS_HOST:9190 --key=h100` (without the variable, where PyTorch is
installed, CUDA cannot start in a forked session process; see tvm_sparseconv/rpc_cluster.py), with
the tracker started here with `--host 0.0.0.0`. One key per GPU
model: a tuning log belongs to one GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tvm_sparseconv.build import cache_dir  # noqa: E402
from tvm_sparseconv.rpc import Tracker  # noqa: E402
from tvm_sparseconv.rpc_cluster import LocalCluster, local_gpu_count, stop_process  # noqa: E402

STATE = cache_dir() / "rpc_cluster.json"  # what `start` left running, for `status` and `stop`


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a tracker and the servers")
    start.add_argument("--key", required=True, help="device key the servers register under, e.g. h100")
    start.add_argument("--gpus", default="all", help="GPU indices, e.g. 0,1 (default: all that TVM sees)")
    start.add_argument("--cpu-servers", type=int, default=0,
                       help="start this many CPU servers instead of GPU servers")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    start.add_argument("--port", type=int, default=9190, help="tracker port (default 9190)")
    start.add_argument("--logs", type=Path, default=STATE.parent / "rpc_logs", help="folder for the processes' logs")
    start.add_argument("--foreground", action="store_true", help="run until Ctrl-C instead of in the background")
    start.add_argument("--sessions", choices=["fork", "spawn"], default="fork",
                       help="how a server runs each session: fork (default; 0.4 s a session on an H200) "
                            "or spawn (a new Python per session, 6 s there)")
    for name in ("status", "stop"):
        p = sub.add_parser(name, help="show what the tracker holds" if name == "status" else "stop what start started")
        p.add_argument("--host", default=None, help="tracker host (default: the one started last)")
        p.add_argument("--port", type=int, default=None, help="tracker port (default: the one started last)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"start": start, "status": status, "stop": stop}[args.command](args)


def start(args) -> int:
    if STATE.exists():
        print(f"a cluster started earlier is still recorded in {STATE}: run `stop` first", file=sys.stderr)
        return 1
    if args.cpu_servers:
        gpus, servers = [], args.cpu_servers
    else:
        gpus = list(range(local_gpu_count())) if args.gpus == "all" else [int(g) for g in args.gpus.split(",")]
        servers = 0
        if not gpus:
            print("TVM sees no GPU here: use --cpu-servers N for CPU servers", file=sys.stderr)
            return 1
    cluster = LocalCluster(args.key, gpus=gpus, servers=servers, host=args.host, port=args.port, log_dir=args.logs,
                           fork_sessions=args.sessions == "fork")
    what = f"{len(gpus)} GPU server(s) (GPUs {','.join(map(str, gpus))})" if gpus else f"{servers} CPU server(s)"
    print(f"starting a tracker on {args.host}:{args.port} and {what} under key {args.key!r} ...")
    cluster.start()
    print(f"ready: tune with  python scripts/tune.py --rpc {args.host}:{args.port} --key {args.key} ...")
    print(f"logs in {args.logs}")
    if args.foreground:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
        finally:
            cluster.stop()
        return 0
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps({"host": args.host, "port": args.port, "key": args.key,
                                 "pids": [p.pid for p in cluster.processes]}) + "\n")
    return 0


def _tracker_address(args) -> tuple[str, int]:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    return args.host or state.get("host", "127.0.0.1"), args.port or state.get("port", 9190)


def status(args) -> int:
    host, port = _tracker_address(args)
    try:
        info = Tracker(host, port, "-").connect().summary()
    except ConnectionError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"tracker {host}:{port}")
    print(f"{'key':<20}{'free':>6}{'pending':>9}")
    for key, q in sorted(info.get("queue_info", {}).items()):
        print(f"{key:<20}{q.get('free', 0):>6}{q.get('pending', 0):>9}")
    print("servers (free now):")
    for s in info.get("server_info", []):
        print(f"  {s['key'].removeprefix('server:'):<18}{s['addr'][0]}:{s['addr'][1]}")
    return 0


def stop(args) -> int:
    if not STATE.exists():
        print("no cluster started by this script is recorded; nothing to stop")
        return 0
    state = json.loads(STATE.read_text())
    for pid in reversed(state["pids"]):
        stop_process(pid)
    STATE.unlink()
    print(f"stopped the tracker on {state['host']}:{state['port']} and {len(state['pids']) - 1} server(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
