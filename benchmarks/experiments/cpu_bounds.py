#!/usr/bin/env python
"""CPU experiment (issue 4, the 4x target): where the headline's ~0.2 s goes on the CPU. Not library code.

  python benchmarks/experiments/cpu_bounds.py --out benchmarks/experiments/cpu_bounds-cpu-znver4.json

- the x_gather stage alone (the channel-major relayout, same schedule as the library's);
- the whole kernel (the schedule compile() picks: tuned record if there is one) with the real
  offsets, and with offsets changed so that every load reads a small window or one address: if
  the time barely moves, the kernel is not bound by where its loads go in memory.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir, te

from tvm_sparseconv.build import build
from tvm_sparseconv.algorithms.ell_gather import X_GATHER, pack_offsets, sparse_conv2d_te
from tvm_sparseconv.targets import host_cpu_target
from tvm_sparseconv.workloads import HEADLINE


def median_ms(f, repeats=7):
    for _ in range(2):
        f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def gather_alone(wl, target, x_np):
    """The library's x_gather stage (from compute.py) on its own, with the CPU rule's schedule of it."""
    args = sparse_conv2d_te(wl)
    x = args[0]
    xg = next(t for t in args[-1].op.input_tensors if t.op.name == X_GATHER)
    sch = s_tir.Schedule(te.create_prim_func([x, xg]))
    xb, xf = sch.get_loops(sch.get_sblock(X_GATHER))
    sch.parallel(sch.fuse(xb, sch.split(xf, factors=[None, 1024])[0]))
    lib = tvm.compile(sch.mod, target=target)
    a = tvm.runtime.tensor(x_np)
    o = tvm.runtime.empty(tuple(int(d) for d in xg.shape), "float32", tvm.cpu())
    return median_ms(lambda: lib["main"](a, o))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    out_path = ap.parse_args().out
    target = host_cpu_target()
    kern = HEADLINE.sparse_kernel()
    wl = HEADLINE.workload(kern)
    x = np.random.default_rng(0).standard_normal(wl.input_shape, dtype=np.float32)
    built = build(wl, target, use_disk_cache=False)
    zeros = np.zeros_like
    offsets = {
        "real pattern": pack_offsets(wl, kern.kh, kern.kw, kern.ci),
        "one input channel (ci=0)": pack_offsets(wl, kern.kh, kern.kw, zeros(kern.ci)),
        "one channel, one kernel row": pack_offsets(wl, zeros(kern.kh), kern.kw, zeros(kern.ci)),
        "one address for every nonzero": zeros(kern.ci),
    }
    results = {
        "machine": f"cpu-{target.attrs['mcpu']}",
        "workload": wl.describe(),
        "schedule": built.schedule_source,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "x_gather_alone_ms": gather_alone(wl, target, x),
        "whole_kernel_ms": {},
    }
    print(f"x_gather alone: {results['x_gather_alone_ms']:.1f} ms")
    dev = tvm.cpu()
    for name, off in offsets.items():
        args = [
            tvm.runtime.tensor(x, dev),
            tvm.runtime.tensor(np.asarray(kern.values), dev),
            tvm.runtime.tensor(off.astype(np.int32), dev),
        ]
        out = tvm.runtime.empty(wl.output_shape, "float32", dev)
        ms = median_ms(lambda: built.function(*args, out))
        results["whole_kernel_ms"][name] = ms
        print(f"{name:<32} {ms:.1f} ms")
    out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
