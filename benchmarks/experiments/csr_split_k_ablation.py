"""Where a csr-split-k kernel's time goes: the same tile with parts of the kernel left out (GPU).

    python benchmarks/experiments/csr_split_k_ablation.py --layers resnet50_conv4_1x1_expand_b1 \\
        --tiles p32q2r64k64t256 --json benchmarks/experiments/csr_split_k/ablation-....json

For each layer and tile, in one process on the same inputs (`--variants ablation`): the kernel as
before v8 (`PIPELINED` off: each item's row pointers, then its nonzeros), v8 (pipelined), and v8
without each part (`cuda_csr_split_k.ABLATE`: the input copy's loads, the walk over the
nonzeros, the output's atomics/stores, the bias/zero kernel) and without all of them (the
launch floor); or (`--variants loads`) v6, v8 and v9 with 2, 4, 8 weight loads per item per step
(`LOADS_PER_ITEM`). Only the complete kernels are checked against float64 (NaN-poisoned output); the
others are wrong by design. Device time, CUDA events, median, the tuner's rotation of inputs;
cuDNN fp32 and TF32 in the same run for scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # --variants: {name: (PIPELINED, LOADS_PER_ITEM, parts left out)}
    "ablation": {
        "v6 (loop per item)": (False, 0, ()),
        "v8 (pipelined)": (True, 0, ()),
        "v8 without the input copy's loads": (True, 0, ("staging",)),
        "v8 without the nonzeros": (True, 0, ("nonzeros",)),
        "v8 without the output atomics": (True, 0, ("output",)),
        "v8 without the bias/zero kernel": (True, 0, ("init",)),
        "v8 with only the copy (no nonzeros, atomics, zero kernel)": (True, 0, ("nonzeros", "output", "init")),
        "launch floor (all four left out)": (True, 0, ("staging", "nonzeros", "output", "init")),
    },
    "loads": {
        "v6 (loop per item)": (False, 0, ()),
        "v8 (pipelined, one load per item per step)": (True, 0, ()),
        "v9 (2 loads per item per step)": (True, 2, ()),
        "v9 (4 loads per item per step)": (True, 4, ()),
        "v9 (8 loads per item per step)": (True, 8, ()),
        "v6 without the nonzeros": (False, 0, ("nonzeros",)),
    },
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets, comma-separated")
    ap.add_argument("--tiles", required=True, help="csr-split-k tiles, comma-separated")
    ap.add_argument("--variants", choices=sorted(VARIANTS), default="ablation",
                    help="ablation: v8 without each part; loads: v6, v8 and v9's loads per item per step")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    import tvm

    import tvm_sparseconv as tsc
    from tvm_sparseconv import algorithms, baselines, tile_tuning, verification
    from tvm_sparseconv.schedules import cuda_csr_split_k as emitter
    from tvm_sparseconv.workloads import workload_set

    alg = algorithms.by_name("csr-split-k")
    dev = tvm.cuda(0)
    rows = []
    for problem in workload_set(args.layers):
        w = problem.dense_kernel()
        kernel = tsc.SparseKernel.from_dense(w)
        wl = algorithms.workload_for(kernel, problem.workload(kernel), alg.name)
        weights = algorithms.pack_weights(wl, kernel)
        for tile in args.tiles.split(","):
            runs, errors = {}, {}
            for name, (pipelined, per_item, parts) in VARIANTS[args.variants].items():
                saved = emitter.PIPELINED, emitter.LOADS_PER_ITEM, emitter.ABLATE
                emitter.PIPELINED, emitter.LOADS_PER_ITEM, emitter.ABLATE = pipelined, per_item, frozenset(parts)
                try:
                    f = alg.build(kernel, wl, alg.tiles()[tile]).mod["sparse_conv2d"]
                finally:
                    emitter.PIPELINED, emitter.LOADS_PER_ITEM, emitter.ABLATE = saved
                if not parts:
                    errors[name] = verification.check_generated(f, kernel, wl, dev)
                runs[name] = tile_tuning.rotated_runner(f, wl, dev, weights, with_bias=wl.has_bias)
            times = {name: baselines.cuda_event_median(fn, args.repeats) for name, fn in runs.items()}
            rng = np.random.default_rng(1)
            xs = [rng.standard_normal(wl.input_shape).astype(np.float32)
                  for _ in range(baselines.rotation_count(int(np.prod(wl.input_shape)) * 4))]
            for label, tf32 in (("cudnn_fp32", False), ("cudnn_tf32", True)):
                times[label] = baselines.cudnn_seconds(xs, w, wl, tf32, args.repeats)[0]
            row = {"layer": problem.name, "tile": tile, "nonzeros": int(kernel.nnz),
                   "seconds": times, "relative_error": errors}
            rows.append(row)
            print(f"{problem.name} {tile}:")
            for name, secs in times.items():
                err = f"  (error {errors[name]:.1e})" if name in errors else ""
                print(f"  {secs * 1e6:7.2f} us  {name}{err}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": tvm.cuda(0).device_name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "variants": args.variants}
        args.json.write_text(json.dumps(meta | {"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
