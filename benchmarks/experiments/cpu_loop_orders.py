"""Which loop order of the CPU ELL-gather kernel keeps its inputs in cache (issue 15's headline).

    python benchmarks/experiments/cpu_loop_orders.py --json benchmarks/experiments/cpu_loop_orders-cpu-znver3.json

`schedules/cpu.py` fixes one order, (image, row block, row, column tile, channel tile, nonzero,
channel, column vector), and tuning only picks its tile sizes. Per output row its nonzeros touch
Cin x KH input rows (352 of 2 KB for the headline: 704 KB, past a 512 KB L2), so consecutive output
rows may not reuse them. The variants here, each checked against float64 first, then timed
(median of `--repeats` whole runs of the compiled kernel on both cores):

- `record`: what `compile()` runs (the committed tuning record);
- `rows-in-registers`: the row loop moved inside the nonzero loop (a 2-D register tile);
- `column-blocks`: output columns in blocks of `--block` outside the row loop, so a block of rows
  re-reads a narrow strip of input from L2;
- `channels-outer`: each channel tile sweeps its rows before the next (its nonzeros stay in L1).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir

import tvm_sparseconv as tsc
from tvm_sparseconv import baselines, reference, targets, tuning_records
from tvm_sparseconv.workloads import workload_set
from tvm_sparseconv.schedules.common import find_blocks


def _base(wl):
    sch = s_tir.Schedule(tuning_records.workload_module(wl)["main"])
    return sch, find_blocks(sch)


def _finish(sch, blocks, outer, k, co_i, ow_i, acc_at):
    acc = sch.cache_write(blocks.conv, 0, "local")
    sch.reverse_compute_at(acc, acc_at, preserve_unit_loops=True)
    sch.transform_layout(blocks.conv, ("write", 0), lambda b_, h, w, c: (b_, h, c, w))
    sch.unroll(co_i)
    sch.vectorize(ow_i)
    wb = sch.get_loops(acc)[-2:]
    sch.reorder(wb[1], wb[0])
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.parallel(outer)
    sch.decompose_reduction(blocks.conv, k)
    xb, xf = sch.get_loops(blocks.x_stage)
    sch.parallel(sch.fuse(xb, sch.split(xf, factors=[None, 1024])[0]))
    return sch


def variant(name: str, wl, oh_in: int, ow_in: int, co_in: int, block: int):
    sch, blocks = _base(wl)
    b, oh, ow, co, k = sch.get_loops(blocks.conv)
    oh_o, oh_i = sch.split(oh, factors=[None, oh_in])
    co_o, co_i = sch.split(co, factors=[None, co_in])
    if name == "rows-in-registers":
        ow_o, ow_i = sch.split(ow, factors=[None, ow_in])
        sch.reorder(b, oh_o, ow_o, co_o, k, oh_i, co_i, ow_i)
        sch.unroll(oh_i)
        return _finish(sch, blocks, sch.fuse(b, oh_o), k, co_i, ow_i, co_o)
    if name == "column-blocks":
        ow_oo, ow_oi, ow_i = sch.split(ow, factors=[None, block // ow_in, ow_in])
        sch.reorder(b, oh_o, ow_oo, oh_i, ow_oi, co_o, k, co_i, ow_i)
        return _finish(sch, blocks, sch.fuse(b, oh_o, ow_oo), k, co_i, ow_i, co_o)
    if name == "channels-outer":
        ow_o, ow_i = sch.split(ow, factors=[None, ow_in])
        sch.reorder(b, oh_o, co_o, oh_i, ow_o, k, co_i, ow_i)
        return _finish(sch, blocks, sch.fuse(b, oh_o), k, co_i, ow_i, ow_o)
    raise ValueError(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default="headline", help="a problem name or workload set")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    target = targets.resolve_target("cpu")
    dev = tvm.cpu(0)
    rows = []
    for problem in workload_set(args.problem):
        w = problem.dense_kernel()
        kernel = tsc.SparseKernel.from_dense(w)
        op = tsc.compile(kernel, problem.input_shape, strides=problem.strides, padding=problem.padding, target=target)
        wl = op.workload
        x = np.random.default_rng(0).standard_normal(wl.input_shape, dtype=np.float32)
        ref = reference.conv2d_f64(x, w, wl)
        args_dev = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(a, dev) for a in
                                                     tsc.algorithms.pack_weights(wl, kernel)]
        flops = wl.useful_flops(kernel.nnz)

        def measure(label, run):
            out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
            run(out)
            err = reference.relative_error(out.numpy(), ref)
            t = baselines.median_wall(lambda i: run(out), args.repeats) if err <= 1e-5 else float("nan")
            rows.append({"problem": problem.name, "variant": label, "seconds": t, "relative_error": err,
                         "useful_gflops": flops / t / 1e9})
            print(f"{problem.name:12s} {label:45s} {t * 1e3:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  err {err:.1e}",
                  flush=True)

        measure(f"record ({op.schedule_source})", lambda out: op.run(args_dev[0], out))
        n_oh, n_ow = wl.output_hw
        grid = [("rows-in-registers", 2, 16, 2, 0), ("rows-in-registers", 4, 8, 2, 0),
                ("rows-in-registers", 2, 8, 4, 0), ("column-blocks", 8, 32, 2, 64),
                ("column-blocks", 16, 32, 2, 128), ("column-blocks", 8, 16, 4, 64),
                ("channels-outer", 8, 32, 2, 0), ("channels-outer", 16, 32, 4, 0)]
        for name, oh_in, ow_in, co_in, block in grid:
            if n_oh % oh_in or n_ow % max(ow_in, block) or wl.out_channels % co_in:
                continue
            sch = variant(name, wl, oh_in, ow_in, co_in, block)
            lib = tvm.compile(sch.mod, target=target)
            f = lib["sparse_conv2d"]
            measure(f"{name} rows={oh_in} cols={ow_in} ch={co_in} block={block}",
                    lambda out, f=f: f(*args_dev, out))
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "target": str(target),
                                         "machine": platform.processor() or platform.machine(),
                                         "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
