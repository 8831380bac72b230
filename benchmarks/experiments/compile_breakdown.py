#!/usr/bin/env python
"""Where register-reuse's compile time goes, and what ptxas makes of the code (no GPU needed).

For each (layer, tile): the first piece of the kernel as `compile()` cuts it, timed through its
three steps (emitting the TIR, TVM + LLVM's NVPTX backend to PTX, ptxas to a cubin), then ptxas
again with each of `--ptxas` option sets, reporting time, registers and spills (`ptxas -v`);
once per `--fma-code` (the FMAs spliced into the PTX as text, as `compile()` builds, or compiled
by TVM and LLVM as before). Writes one JSON.

    python benchmarks/experiments/compile_breakdown.py --layers headline:g32p128x2GH \\
        --ptxas="-O3;-O3 -maxrregcount=80;-O0" --json benchmarks/experiments/compile_breakdown-<host>.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def ptxas_run(ptx_path: Path, options: str, arch: str = "sm_90") -> dict:
    """ptxas with `options` on the PTX file: seconds, registers, spill bytes (stores, loads)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(["ptxas", f"-arch={arch}", "-v", *options.split(), "-o", str(Path(tmp, "k.cubin")),
                               str(ptx_path)], capture_output=True, text=True)
        secs = time.perf_counter() - t0
    if done.returncode:
        return {"options": options, "error": done.stderr.strip()[-500:]}
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", done.stderr)]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    return {"options": options, "seconds": secs, "registers": max(regs) if regs else None,
            "spill_store_bytes": max((int(a) for a, _ in spills), default=0),
            "spill_load_bytes": max((int(b) for _, b in spills), default=0)}


def breakdown(layer: str, tile_name: str, ptxas_sets: list[str], fma_code: str = "ptx", prefetch: str = "start") -> dict:
    from tvm_sparseconv.algorithms import by_name
    from tvm_sparseconv.nvptx_build import nvptx_ptx
    from tvm_sparseconv.workloads import workload_set

    algorithm = by_name("register-reuse")
    tile = dataclasses.replace(algorithm.tiles()[tile_name], prefetch=prefetch)
    problem = workload_set(layer)[0]
    kernel = problem.sparse_kernel()
    wl = problem.workload(kernel, "register-reuse")
    from tvm_sparseconv.schedules.cuda_register_reuse import split_count

    n, linked = algorithm._pieces(int(kernel.nnz), wl, tile, splits=split_count(kernel.to_dense(), tile))
    t0 = time.perf_counter()
    func = (algorithm.recipe(kernel, wl, tile, piece=("part", 0, n), fma_code=fma_code)() if n > 1
            else algorithm.generate(kernel, wl, tile, fma_code=fma_code))
    t1 = time.perf_counter()
    ptx = nvptx_ptx(func)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "k.ptx")
        path.write_text(ptx)
        runs = [ptxas_run(path, options) for options in ptxas_sets]
    row = {"layer": layer, "tile": tile_name, "fma_code": fma_code, "prefetch": prefetch, "nonzeros": int(kernel.nnz), "pieces": n, "linked": linked,
           "piece": 0, "emit_s": t1 - t0, "tvm_llvm_s": t2 - t1, "ptx_lines": ptx.count("\n"), "ptxas": runs}
    print(f"{layer} {tile_name} (FMAs {fma_code}, prefetch {prefetch}): {n} piece(s), emit {row['emit_s']:.1f} s, TVM+LLVM {row['tvm_llvm_s']:.1f} s; "
          + "; ".join(f"ptxas {r['options']}: " + (f"{r['seconds']:.1f} s, {r['registers']} regs, spills "
                                                     f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B"
                                                     if "seconds" in r else "failed") for r in runs), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="layer:tile pairs, comma-separated (e.g. headline:g32p128x2GH)")
    ap.add_argument("--ptxas", default="-O3", help="ptxas option sets, separated by ';'")
    ap.add_argument("--fma-code", default="ptx,tir",
                    help="how the FMAs reach the PTX, comma-separated: ptx (spliced text, compile()'s way), tir")
    ap.add_argument("--prefetch", default="start",
                    help="where the next stage's loads go (the tile's `prefetch`, replaced), comma-separated: start, middle")
    ap.add_argument("--json", required=True, type=Path)
    args = ap.parse_args(argv)
    rows = [breakdown(*pair.split(":"), [s.strip() for s in args.ptxas.split(";") if s.strip()], fma_code, prefetch)
            for pair in args.layers.split(",") for fma_code in args.fma_code.split(",")
            for prefetch in args.prefetch.split(",")]
    args.json.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": " ".join(["python", *sys.argv]), "layers": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
