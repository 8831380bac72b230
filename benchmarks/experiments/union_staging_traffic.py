#!/usr/bin/env python
"""Bytes the union kernels stage into shared memory, against their measured time (no GPU needed).

    python benchmarks/experiments/union_staging_traffic.py \\
        --results benchmarks/results/nvidia-h100-resnet50-network.json --records tuning_logs/nvidia-h100 \\
        --json benchmarks/experiments/union_staging_traffic-nvidia-h100.json

A union kernel's block stages, chunk by chunk, the input its pixels read once for all its groups
of 8 output channels; a layer whose groups span several blocks reads its input that many times
(from L2). For every layer of a network bench whose TF32 mode ran a union algorithm, this
replays the record that bench used (`--records`, else the untuned template), reads the grid and
the staged tile from the scheduled function, and prints: blocks, bytes staged in all (blocks x
tile x chunks) and as times the input the layer reads, its DRAM bytes (input read, packed
weights, output: the floor),
the measured time and the staging rate it implies. `--group-caps` adds the untuned template at
those most groups a block (the rules' `group_cap`) for each layer, staged bytes only.

With `--occupancy` it also compiles each kernel with nvcc for sm_90 (`ptxas -v`: registers and
shared memory a thread and a block) and prints how full it can keep an H100: blocks an SM
(`SM90` limits), waves (blocks / (SMs x blocks an SM)) and the warps an SM holds on average
over the grid's first wave, the number that says whether a latency-bound kernel has enough
warps to hide its waits. `--shares` adds the untuned template with its reduction split in those
shares of the input chunks (`reduction_slices`; 1 for the template as it is), `--splits` the template
at a group cap with a split (a second kernel's or a cluster's), `--layers` picks layers by name.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, targets, tuning_records
from tvm_sparseconv.algorithms import union_tf32
from tvm_sparseconv.schedules import default_rule
from tvm_sparseconv.tir_build import compile_tir
from tvm_sparseconv.workloads import workload_set

ARCH = "sm_90"
UNION_ALGORITHMS = ("union-tf32", "union-tf32-async")
_GRID = re.compile(r'T\.thread_binding\((\d+), thread="blockIdx\.x"\)')
#: a cluster reduction's shares (`reduction_in_cluster`): blocks of their own along y, a cluster a tile
_GRID_Y = re.compile(r'T\.thread_binding\((\d+), thread="blockIdx\.y"\)')
_STAGED = re.compile(r"__shared__ alignas\(\d+\) float x_tf32_shared\w*\[(\d+)\]")
_WARPS = re.compile(r'T\.thread_binding\((\d+), thread="threadIdx\.y"\)')
_REGISTERS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
#: a split reduction's partial sums (`CUDAUnionTF32._split_reduction`): their first axis is the shares
_SHARES = re.compile(r"conv_rf = T\.sblock_alloc_buffer\(\((\d+),")
#: an H100 SXM's SMs and each SM's limits (CUDA occupancy rules for compute capability 9.0)
SM90 = {"sms": 132, "warps": 64, "blocks": 32, "registers": 65536, "register_unit": 256, "shared": 233472,
        "shared_per_block_reserved": 1024}


def scheduled_facts(mod, wl, rule, occupancy: bool = False) -> dict:
    """Grid, staged tile, bytes staged in all and times the input is staged, of a scheduled
    union function (built for sm_90: the tile's words are those of the CUDA source); with
    `occupancy`, also `occupancy_facts` of its kernel."""
    script = mod.script()
    grids = _GRID.findall(script)  # (a split reduction's second kernel, the sum, comes after the union's)
    blocks = int(grids[0]) if grids else 0
    in_cluster = max((int(y) for y in _GRID_Y.findall(script)), default=1)  # each share a block
    lib = compile_tir(mod, targets.cuda_target_for_arch(ARCH))
    source = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
    shared = _STAGED.search(source)
    if not blocks or shared is None:
        raise ValueError("no blockIdx.x binding or x_tf32_shared buffer in the scheduled function")
    tile_words = int(shared.group(1)) // getattr(rule, "stages", 1)  # async: `stages` tiles at once
    shares = _SHARES.search(script)
    blocks *= in_cluster
    chunks = -(-wl.input_shape[-1] // wl.chunk) // (int(shares.group(1)) if shares else in_cluster)  # a block's
    staged = blocks * tile_words * 4 * chunks
    facts = {"blocks": blocks, "tile_words": tile_words, "chunks": chunks, "staged_mb": round(staged / 1e6, 2),
             "input_reads": round(staged / (input_read_words(wl) * 4), 2)}
    if occupancy:
        warps = max((int(w) for w in _WARPS.findall(script)), default=1)  # every threadIdx.y loop binds the same
        facts.update(occupancy_facts(blocks, warps, *ptxas_resources(source)))
    return facts


def ptxas_resources(source: str) -> tuple[int, int]:
    """(registers a thread, shared bytes a block) of the kernel in CUDA `source`, from `ptxas -v`
    of nvcc's sm_90 build (as TVM builds it); of several kernels, the one with the most shared
    memory (a split reduction's sum has none)."""
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "k.cu"
        cu.write_text(source)
        done = subprocess.run(["nvcc", "-cubin", f"-arch={ARCH}", "-O3", "-Xptxas", "-v",
                               "-o", str(cu.with_suffix(".cubin")), str(cu)], check=True, capture_output=True, text=True)
    kernels = []
    for report in done.stderr.split("Compiling entry function")[1:]:
        registers, smem = _REGISTERS.search(report), _SMEM.search(report)
        if registers is not None:
            kernels.append((int(smem.group(1)) if smem else 0, int(registers.group(1))))
    if not kernels:
        raise ValueError(f"no register count in ptxas' report: {done.stderr[-500:]!r}")
    shared, registers = max(kernels)
    return registers, shared


def occupancy_facts(blocks: int, warps: int, registers: int, shared: int, sm: dict = SM90) -> dict:
    """Blocks an SM (the tightest of warps, registers, shared memory and blocks), waves, and the
    warps an SM holds on average while the first wave runs, for a grid of `blocks` x `warps`."""
    unit = sm["register_unit"]
    regs_per_warp = -(-registers * 32 // unit) * unit
    limits = {"warps": sm["warps"] // warps, "registers": sm["registers"] // (regs_per_warp * warps),
              "shared": sm["shared"] // (shared + sm["shared_per_block_reserved"]), "blocks": sm["blocks"]}
    per_sm = min(limits.values())
    waves = blocks / (sm["sms"] * per_sm) if per_sm else math.inf
    return {"warps_a_block": warps, "registers": registers, "shared_bytes": shared, "blocks_an_sm": per_sm,
            "limited_by": min(limits, key=limits.get), "waves": round(waves, 2),
            "warps_an_sm": round(min(per_sm, blocks / sm["sms"]) * warps, 1)}


def input_read_words(wl) -> int:
    """Input words the layer reads: a strided 1x1 layer only its output pixels' positions."""
    if union_tf32.is_pointwise(wl.kernel_shape):
        return math.prod(wl.output_shape[:-1]) * wl.input_shape[-1]
    return math.prod(wl.input_shape)


def dram_mb(wl, packed) -> float:
    """MB of input read, packed weights and taps, and output: what any kernel moves from and to DRAM."""
    words = input_read_words(wl) + math.prod(wl.output_shape)
    return round(words * 4 / 1e6 + sum(a.nbytes for a in packed) / 1e6, 2)


def layer_row(problem, algorithm: str, records: Path | None, group_caps=(), occupancy: bool = False,
              shares=(), splits=()) -> dict:
    target = targets.cuda_target_for_arch(ARCH)
    kernel = tsc.SparseKernel.from_dense(problem.dense_kernel())
    wl = algorithms.workload_for(kernel, problem.workload(kernel), algorithm)
    rule = default_rule(target, algorithm)
    tuned = tuning_records.find_tuned_schedule(wl, target, records) if records else None
    if tuned is not None:
        how, mod = "tuned", tuned.schedule.mod
    else:
        how, mod = "untuned", rule.apply(tuning_records.workload_module(wl)["main"], target, False).mod
    row = {"layer": problem.name, "algorithm": algorithm, "schedule": how,
           "dram_mb": dram_mb(wl, algorithms.pack_weights(wl, kernel)), **scheduled_facts(mod, wl, rule, occupancy)}
    # the untuned template with one choice changed: (row key, rule attribute, values, with occupancy)
    # (`splits`: a group cap and shares at once, "CAP:SHARES", "c" after the shares for a cluster)
    choices = [_split_choice(split) for split in splits]
    for key, label, changes, with_occupancy in (
            [("untuned_by_group_cap", c, {"group_cap": c}, False) for c in group_caps]
            + [("untuned_by_shares", n, {"reduction_slices": n}, occupancy) for n in shares]
            + [("untuned_splits", _split_label(choice), choice, occupancy) for choice in choices]):
        changed = copy.copy(rule)  # the registered rule is shared
        for attr, value in changes.items():
            setattr(changed, attr, value)
        sch = changed.apply(tuning_records.workload_module(wl)["main"], target, False)
        row.setdefault(key, {})[label] = None if sch is None else scheduled_facts(sch.mod, wl, changed, with_occupancy)
    return row


def _split_choice(split: str) -> dict:
    """`--splits`' "CAP:SHARES" (a second kernel) or "CAP:SHARESc" (a cluster) as rule attributes."""
    cap, shares = split.split(":")
    return {"group_cap": int(cap), "reduction_slices": int(shares.rstrip("c")),
            "reduction_in_cluster": shares.endswith("c")}


def _split_label(choice: dict) -> str:
    return (f"{choice['group_cap']} groups a block, {choice['reduction_slices']} shares"
            + (" (a cluster)" if choice["reduction_in_cluster"] else ""))


def _untuned_line(label: str, facts: dict | None) -> str:
    """A printed line of an untuned variant's `scheduled_facts` (None: the template declined)."""
    if facts is None:
        return f"\n    untuned, {label}: declined"
    occupancy = (f", {facts['warps_a_block']} warps a block, {facts['registers']} registers, {facts['shared_bytes']} "
                 f"B shared, {facts['waves']} waves, {facts['warps_an_sm']} warps an SM" if "waves" in facts else "")
    return f"\n    untuned, {label}: blocks {facts['blocks']}, staged {facts['staged_mb']:.1f} MB{occupancy}"


def fit(rows: list[dict]) -> dict | None:
    """Least-squares time = fixed + staged bytes / rate over `rows` (at least 3)."""
    if len(rows) < 3:
        return None
    staged = np.array([r["staged_mb"] for r in rows])
    us = np.array([r["measured_us"] for r in rows])
    slope, fixed = np.polyfit(staged, us, 1)
    resid = us - (fixed + slope * staged)
    return {"fixed_us": round(float(fixed), 2), "rate_tb_s": round(float(1 / slope), 2) if slope > 0 else None,
            "largest_residual_us": round(float(np.abs(resid).max()), 2), "layers": len(rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="a network bench's JSON (scripts/bench.py --out)")
    ap.add_argument("--records", type=Path, help="the tuning-log folder that bench used (default: untuned)")
    ap.add_argument("--group-caps", default="", help="also the untuned template at these most groups a block, "
                    "comma-separated (staged bytes only)")
    ap.add_argument("--shares", default="", help="also the untuned template with its reduction split in these "
                    "shares of the input chunks, comma-separated (`reduction_slices`; 1: the template unsplit)")
    ap.add_argument("--splits", default="", help="also the untuned template at a group cap with its reduction "
                    "split, comma-separated CAP:SHARES (summed by a second kernel) or CAP:SHARESc (in a cluster)")
    ap.add_argument("--layers", default="", help="only layers whose names contain one of these, comma-separated")
    ap.add_argument("--occupancy", action="store_true", help="also registers, blocks an SM, waves and warps an SM "
                    "(compiles each kernel with nvcc for sm_90)")
    ap.add_argument("--json", type=Path, help="write the rows and the fit here")
    args = ap.parse_args(argv)
    caps = [int(c) for c in args.group_caps.split(",") if c]
    shares = [int(n) for n in args.shares.split(",") if n]
    splits = [s for s in args.splits.split(",") if s]
    layers = [name for name in args.layers.split(",") if name]
    bench = json.loads(args.results.read_text())
    rows = []
    for point in bench["points"]:
        mode = point.get("tf32_mode") or {}
        if mode.get("algorithm") not in UNION_ALGORITHMS or (layers and not any(n in point["problem"] for n in layers)):
            continue
        (problem,) = workload_set(point["problem"])
        row = layer_row(problem, mode["algorithm"], args.records, caps, args.occupancy, shares, splits)
        row.update(count=point["count"], measured_us=round(mode["seconds"] * 1e6, 2),
                   cudnn_tf32_us=round(point["seconds"]["cudnn_tf32"] * 1e6, 2))
        row["staging_tb_s"] = round(row["staged_mb"] / row["measured_us"], 2)
        rows.append(row)
        print(f"{row['layer']:40s} {row['algorithm']:17s} {row['schedule']:7s} blocks {row['blocks']:5d} "
              f"staged {row['staged_mb']:7.1f} MB ({row['input_reads']:5.2f}x input) DRAM {row['dram_mb']:6.1f} MB "
              f"{row['measured_us']:6.1f} us ({row['staging_tb_s']:.2f} TB/s) cuDNN TF32 {row['cudnn_tf32_us']:6.1f}"
              + (f"\n    {row['warps_a_block']} warps a block, {row['registers']} registers, {row['shared_bytes']} B "
                 f"shared: {row['blocks_an_sm']} blocks an SM ({row['limited_by']}), {row['waves']} waves, "
                 f"{row['warps_an_sm']} warps an SM" if "waves" in row else "")
              + "".join(f"\n    group cap {c}: " + (f"blocks {f['blocks']}, staged {f['staged_mb']:.1f} MB "
                                                      f"({f['input_reads']:.2f}x)" if f else "declined")
                        for c, f in row.get("untuned_by_group_cap", {}).items())
              + "".join(_untuned_line(f"{n} shares", f) for n, f in row.get("untuned_by_shares", {}).items())
              + "".join(_untuned_line(label, f) for label, f in row.get("untuned_splits", {}).items()), flush=True)
    pointwise = fit([r for r in rows if "1x1" in r["layer"]])
    if pointwise:
        print(f"1x1 layers: time = {pointwise['fixed_us']} us + staged / {pointwise['rate_tb_s']} TB/s "
              f"(largest residual {pointwise['largest_residual_us']} us over {pointwise['layers']} layers)")
    if args.json:
        args.json.write_text(json.dumps({"results": str(args.results), "records": str(args.records),
                                         "device": bench.get("device"), "fit_1x1": pointwise, "layers": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
