"""How much of a CPU sparse layer is the channel-major relayout (ell-gather's ``x_gather`` stage)?

ResNet-50's 14x14 and 7x7 1x1 layers run 4-5 GFLOP/s of useful multiply-adds on the 2-core znver3
inside the model (`pruned_resnet50.py`, stop 34), where the 3x3 layers run 10: conv4 1x1 reduce
(1024 -> 256) stays dense. Each call first copies its NHWC input into the channel-major gather
layout (a transpose of the whole input). This times, per layer, `compile()`'s op (its record, the relayout blocked
at replay: `schedules/cpu.py`), the same record as tuned (`layer_before`: relayout in chunks of 1024),
and the relayout alone (the same stage, scheduled as the CPU rules scheduled it: parallel over chunks of
1024 output elements), in turns, on the same input; and the relayout scheduled in blocks of
(channels x positions) (`VARIANTS`), so that both its reads and its writes stay within a few cache
lines.

    python benchmarks/experiments/cpu_gather_share.py --json benchmarks/experiments/cpu_gather_share-cpu-znver3.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir, te

import tvm_sparseconv as tsc
from tvm_sparseconv import baselines, targets, tuning_records
from tvm_sparseconv.algorithms import ell_gather
from tvm_sparseconv.workloads import workload_set

LAYERS = ("resnet50_conv4_1x1_reduce_b1,resnet50_conv4_1x1_expand_b1,resnet50_conv5_1x1_reduce_b1,"
          "resnet50_conv5_1x1_expand_b1,resnet50_conv3_1x1_reduce_b1,resnet50_conv4_3x3_b1")


#: relayout schedules compared: None = as schedules/cpu.py did it (chunks of 1024 output elements);
#: (block, inner) = blocks of `block` channels x `block` positions, positions ("r") or channels ("c") innermost
VARIANTS = {"relayout": None, "relayout_b16r": (16, "r"), "relayout_b16c": (16, "c"), "relayout_b32r": (32, "r")}


def relayout(wl, target, variant):
    """The x_gather stage of `wl` alone: (x) -> xg, scheduled as `variant` (`VARIANTS`)."""
    tensors = ell_gather.sparse_conv2d_te(wl)
    x = tensors[0]
    xg = next(t for t in _producers(tensors[-1]) if t.op.name == ell_gather.X_GATHER)
    sch = s_tir.Schedule(te.create_prim_func([x, xg]))
    block = sch.get_sblock(ell_gather.X_GATHER)
    b, f = sch.get_loops(block)
    if variant is not None:  # f = c * plane + r, in blocks of channels x positions
        size, inner = variant
        plane = int(np.prod(wl.gather_hw))
        c, r = sch.split(f, factors=[None, plane])
        c_o, c_i = sch.split(c, factors=[None, size])
        r_o, r_i = sch.split(r, factors=[None, size])
        sch.reorder(b, c_o, r_o, *((c_i, r_i) if inner == "r" else (r_i, c_i)))
        sch.parallel(sch.fuse(b, c_o, r_o))
    else:  # as schedules/cpu.py does it
        sch.parallel(sch.fuse(b, sch.split(f, factors=[None, 1024])[0]))
    return tvm.compile(sch.mod, target=target)


def _producers(t):
    seen, todo = [], [t]
    while todo:
        cur = todo.pop()
        for inp in getattr(cur.op, "input_tensors", []):
            if inp not in seen:
                seen.append(inp)
                todo.append(inp)
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default=LAYERS, help="problems or workload sets, comma-separated")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    target = targets.host_cpu_target()
    rows = []
    for problem in workload_set(args.layers):
        kernel = problem.sparse_kernel()
        op = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding, target="cpu")
        tuning_records.UPGRADE_RELAYOUT = False  # the same record with its relayout as tuned (chunks of 1024)
        try:
            before = tsc.compile(problem.sparse_kernel(), problem.input_shape,  # another kernel object: not compile()'s cached op strides=problem.strides, padding=problem.padding,
                                 target="cpu")
        finally:
            tuning_records.UPGRADE_RELAYOUT = True
        rng = np.random.default_rng(0)
        x = tvm.runtime.tensor(rng.standard_normal(problem.input_shape).astype(np.float32))
        out = tvm.runtime.empty(op.output_shape, "float32")
        fns = {"layer": lambda i: op.run(x, out), "layer_before": lambda i: before.run(x, out)}
        if op.workload.algorithm == "ell-gather":
            wl = op.workload
            for name, variant in VARIANTS.items():
                lib = relayout(wl, target, variant)
                xg = tvm.runtime.empty((wl.input_shape[0], wl.input_shape[3] * int(np.prod(wl.gather_hw))), "float32")
                fns[name] = lambda i, lib=lib, xg=xg: lib["main"](x, xg)
        secs = baselines.interleaved_median_wall(list(fns.values()), args.repeats)
        row = {"problem": problem.name, "algorithm": op.workload.algorithm, "schedule": op.schedule_source,
               "useful_macs": int(kernel.nnz) * int(np.prod(op.output_shape[:3])),
               **{f"{k}_us": s * 1e6 for k, s in zip(fns, secs)}}
        row["useful_gflops"] = 2 * row["useful_macs"] / secs[0] / 1e9
        rows.append(row)
        print(f"{problem.name:38s} {row['algorithm']:18s} layer {row['layer_us']:8.1f} us"
              + "".join(f"  {k} {row[k + '_us']:7.1f} us" for k in fns if k != "layer")
              + f"  ({row['useful_gflops']:.1f} GFLOP/s useful)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"script": "benchmarks/experiments/cpu_gather_share.py", "cpu": platform.processor()
                                         or targets.target_folder_name(target), "target": str(target),
                                         "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": args.repeats,
                                         "layers": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
