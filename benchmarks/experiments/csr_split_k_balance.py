"""What balancing csr-split-k's channels over its warps could gain: the layer's pruned pattern against a
pattern of the same nonzeros spread evenly (GPU; `--predict-only` on any machine).

    python benchmarks/experiments/csr_split_k_balance.py --layers resnet50_conv5_1x1_reduce_b1 \\
        --tiles p32q2r64k64t256 --json benchmarks/experiments/csr_split_k/balance-....json

A block walks its output channels' nonzeros of one chunk of input channels; a warp takes
(channel, pixel column) items, so with 16 pixel columns one warp walks two channels per round side
by side and waits for the longer, and the block waits for its slowest warp (barrier). Sputnik's
"row swizzle" orders rows by length so that such neighbours are alike. Before building that
(a per-(block, chunk) channel order from the pack), this bounds its gain: the same layer and tile
on (a) the workload set's random pattern and (b) "even", a pattern with the same number of
nonzeros where every (channel, chunk) has the same count up to one, the longer ones in channel
pairs spread over the warps, i.e. what a perfect order would leave. Both are checked against
float64 (NaN-poisoned output) and timed in one process (device time, CUDA events, median); the
steps column is the model: per block the slowest warp's sum over its item rounds of its lanes'
longest walk, averaged over blocks, against the block's mean warp ("balanced").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def counts_per_chunk(dense: np.ndarray, chunk: int) -> np.ndarray:
    """Nonzeros of each output channel in each chunk of `chunk` input channels: (Cout, chunks)."""
    nz = dense.reshape(dense.shape[2], dense.shape[3]) != 0  # 1x1 HWIO -> (Cin, Cout)
    cin = nz.shape[0]
    pad = -cin % chunk
    nz = np.pad(nz, ((0, pad), (0, 0)))
    return nz.reshape(-1, chunk, nz.shape[1]).sum(axis=1).T


def warp_steps(counts: np.ndarray, tile) -> dict:
    """The model: mean over blocks of (slowest warp's steps, mean warp's steps)."""
    rows, ncol, threads = tile.rows, tile.columns, tile.threads
    rounds = -(-(rows * ncol) // threads)
    cout, splits = counts.shape
    padded = np.zeros((-(-cout // rows) * rows, splits), counts.dtype)
    padded[:cout] = counts
    slowest, mean = [], []
    for bx in range(padded.shape[0] // rows):
        for by in range(splits):
            c = padded[bx * rows:(bx + 1) * rows, by]
            warps = np.zeros(threads // 32)
            for it in range(rounds):
                e = it * threads + np.arange(threads)
                walk = np.where(e < rows * ncol, c[np.minimum(e // ncol, rows - 1)], 0)
                warps += walk.reshape(-1, 32).max(axis=1)
            slowest.append(warps.max())
            mean.append(warps.mean())
    return {"slowest_warp": float(np.mean(slowest)), "mean_warp": float(np.mean(mean))}


def even_pattern(dense: np.ndarray, chunk: int, rng: np.random.Generator) -> np.ndarray:
    """A 1x1 kernel with `dense`'s number of nonzeros, every (channel, chunk) count within one of
    the others; the longer ones go to channel pairs (2m, 2m+1) and rotate with the chunk so that
    each warp gets its share. Positions within a chunk and values are random."""
    cin, cout = dense.shape[2], dense.shape[3]
    splits = -(-cin // chunk)
    total = int(np.count_nonzero(dense))
    base, extra = divmod(total, cout * splits)
    pairs = -(-cout // 2)
    f = (extra // 2) / (splits * pairs)  # the share of (chunk, pair) slots that get one more
    out = np.zeros((cin, cout), np.float32)
    for by in range(splits):
        width = min(chunk, cin - by * chunk)
        for m in range(cout):
            j = by * pairs + (m // 2 + 5 * by) % pairs  # spread evenly (Bresenham), shifted per chunk
            k = min(base + int(np.floor((j + 1) * f) - np.floor(j * f)), width)
            ci = by * chunk + rng.choice(width, k, replace=False)
            v = rng.standard_normal(k).astype(np.float32)
            v[v == 0] = 1.0
            out[ci, m] = v
    return out.reshape(1, 1, cin, cout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets (1x1), comma-separated")
    ap.add_argument("--tiles", required=True, help="csr-split-k tiles, comma-separated")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--predict-only", action="store_true", help="only the step model (no GPU)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    from tvm_sparseconv import algorithms
    from tvm_sparseconv.schedules import cuda_csr_split_k as emitter
    from tvm_sparseconv.workloads import workload_set

    alg = algorithms.by_name("csr-split-k")
    rows = []
    for problem in workload_set(args.layers):
        w = problem.dense_kernel()
        for tile_name in args.tiles.split(","):
            tile = emitter.TILES[tile_name]
            patterns = {"pruned": w, "even": even_pattern(w, tile.chunk, np.random.default_rng(7))}
            row = {"layer": problem.name, "tile": tile_name, "nonzeros": {}, "steps": {}, "seconds": {},
                   "relative_error": {}}
            for name, dense in patterns.items():
                row["nonzeros"][name] = int(np.count_nonzero(dense))
                row["steps"][name] = warp_steps(counts_per_chunk(dense, tile.chunk), tile)
            if not args.predict_only:
                _time(row, patterns, problem, tile, alg, args.repeats)
            rows.append(row)
            print(f"{problem.name} {tile_name}: " + "; ".join(
                f"{n}: {row['nonzeros'][n]} nonzeros, slowest warp {row['steps'][n]['slowest_warp']:.1f} steps"
                f" (mean warp {row['steps'][n]['mean_warp']:.1f})"
                + (f", {row['seconds'][n] * 1e6:.2f} us, error {row['relative_error'][n]:.1e}"
                   if n in row["seconds"] else "") for n in patterns), flush=True)
            for n in ("cudnn_fp32", "cudnn_tf32"):
                if n in row["seconds"]:
                    print(f"  {n} {row['seconds'][n] * 1e6:.2f} us")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "predict_only": args.predict_only}
        if not args.predict_only:
            import tvm

            meta["device"] = tvm.cuda(0).device_name
        args.json.write_text(json.dumps(meta | {"rows": rows}, indent=1) + "\n")
    return 0


def _time(row: dict, patterns: dict, problem, tile, alg, repeats: int) -> None:
    """Build, check and time the tile on each pattern, and cuDNN on the pruned one (same process)."""
    import tvm

    from tvm_sparseconv import SparseKernel, algorithms, baselines, tile_tuning, verification

    dev = tvm.cuda(0)
    runs = {}
    for name, dense in patterns.items():
        kernel = SparseKernel.from_dense(dense)
        wl = algorithms.workload_for(kernel, problem.workload(kernel), alg.name)
        f = alg.build(kernel, wl, tile).mod["sparse_conv2d"]
        row["relative_error"][name] = verification.check_generated(f, kernel, wl, dev)
        runs[name] = tile_tuning.rotated_runner(f, wl, dev, algorithms.pack_weights(wl, kernel), with_bias=wl.has_bias)
    for name, fn in runs.items():
        row["seconds"][name] = baselines.cuda_event_median(fn, repeats)
    kernel = SparseKernel.from_dense(patterns["pruned"])
    wl = problem.workload(kernel)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(wl.input_shape).astype(np.float32)
          for _ in range(baselines.rotation_count(int(np.prod(wl.input_shape)) * 4))]
    for label, tf32 in (("cudnn_fp32", False), ("cudnn_tf32", True)):
        row["seconds"][label] = baselines.cudnn_seconds(xs, patterns["pruned"], wl, tf32, repeats)[0]


if __name__ == "__main__":
    raise SystemExit(main())
