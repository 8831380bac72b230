#!/usr/bin/env python
"""Compile time without tuning, per layer and algorithm, on this machine (issue 12: <= 30 s per layer).

For CUDA no GPU is needed: the untuned template is lowered by TVM and its CUDA source compiled to
a cubin for sm_90 with the local nvcc, which is what `compile()` does on a GPU machine before the
module is loaded. For the CPU, the LLVM build of the untuned template. Generated algorithms (built
per kernel from a tile: register-reuse, cpu-register-reuse, csr-split-k) are built as `compile()` builds
them, with the tile of their record (CUDA: in `--gpu-folder`; CPU: this CPU's or its family's),
where `compile()` would choose them (their record beats the layer's scheduled records).
Writes `benchmarks/experiments/compile_time-<host>.json`.

  python benchmarks/experiments/compile_time.py --sets resnet50_network_s90_b1
  python benchmarks/experiments/compile_time.py --sets resnet50_network_s90_b32 --targets cuda --generated-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402

from tvm_sparseconv import algorithms, targets, tuning_records  # noqa: E402
from tvm_sparseconv.schedules import default_rule  # noqa: E402
from tvm_sparseconv.workloads import workload_set  # noqa: E402


def compile_seconds(wl, target) -> dict:
    t0 = time.perf_counter()
    sch = default_rule(target, wl.algorithm).apply(tuning_records.workload_module(wl)["main"], target, False)
    lib = tvm.compile(sch.mod, target=target)
    if target.kind.name != "cuda":
        lib[algorithms.FUNC_NAME]  # LLVM generates machine code when the function is first looked up
    out = {"tvm_s": time.perf_counter() - t0}
    if target.kind.name == "cuda":
        from tvm.support import nvcc

        src = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
        t0 = time.perf_counter()
        with target:
            nvcc.compile_cuda(src, target_format="cubin", arch="sm_90", compiler="nvcc")
        out["nvcc_s"] = time.perf_counter() - t0
    out["total_s"] = sum(out.values())
    return out


def chosen_generated(kernel, wl0, target, gpu_folder: Path):
    """The generated workload `compile()` would build for this layer (its record beats the
    scheduled ones: `build.choose_generated`), else None."""
    from tvm_sparseconv import build

    folder = gpu_folder if target.kind.name == "cuda" else None
    chosen, _ = build.choose_generated(kernel, algorithms.workloads_for(kernel, wl0, target.kind.name),
                                       algorithms.generated_workloads_for(kernel, wl0, target.kind.name), target, folder)
    return chosen


#: generated algorithms whose module TVM builds from CUDA C (on a GPU machine nvcc runs inside
#: `tvm.compile`; here, without TVM's CUDA runtime, it is timed apart); register-reuse brings its cubin
NVCC_BUILT = {"csr-split-k"}


def generated_seconds(kernel, wl, target, gpu_folder: Path) -> dict:
    """Build `wl` under its generated algorithm as `compile()` does (no disk cache; machine code
    generated as when stored in the module cache) with its record's tile: (tile, seconds)."""
    import tempfile

    from tvm_sparseconv import build

    algorithm = algorithms.by_name(wl.algorithm)
    found = build.generated_record(wl, target, gpu_folder if target.kind.name == "cuda" else None, int(kernel.nnz))
    name = found.record["tile"]
    t0 = time.perf_counter()
    lib = algorithm.build(kernel, wl, algorithm.tiles()[name], target)
    with tempfile.TemporaryDirectory() as tmp:
        lib.export_library(str(Path(tmp, "m.so")))
    out = {"tile": name, "record": str(found.folder.relative_to(ROOT)), "tvm_s": time.perf_counter() - t0}
    if wl.algorithm in NVCC_BUILT:
        from tvm.support import nvcc

        source = next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()
        t0 = time.perf_counter()
        with target:
            nvcc.compile_cuda(source, target_format="cubin", arch="sm_90", compiler="nvcc")
        out["nvcc_s"] = time.perf_counter() - t0
    return out | {"total_s": sum(v for k, v in out.items() if k.endswith("_s"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="resnet50_network_s90_b1", help="workload set(s), comma-separated")
    ap.add_argument("--targets", default="cuda,cpu", help="cuda (needs nvcc, not a GPU) and/or cpu")
    ap.add_argument("--generated-only", action="store_true", help="only the generated algorithms")
    ap.add_argument("--gpu-folder", type=Path, default=ROOT / "tuning_logs" / "nvidia-h200",
                    help="whose tile records the CUDA generated algorithms use (default: the H200's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    kinds = args.targets.split(",")
    if "cuda" in kinds and shutil.which("nvcc") is None:
        sys.exit("nvcc is not on PATH: run with --targets cpu")
    rows = []
    for problem in workload_set(args.sets):
        kernel = problem.sparse_kernel()
        for kind in kinds:
            target = targets.cuda_target_for_arch("sm_90") if kind == "cuda" else targets.host_cpu_target()
            wl0 = problem.workload(kernel)
            scheduled = [] if args.generated_only else algorithms.workloads_for(kernel, wl0, target.kind.name)
            chosen = chosen_generated(kernel, wl0, target, args.gpu_folder)
            for wl in scheduled + ([chosen] if chosen is not None else []):
                generated = algorithms.by_name(wl.algorithm).generated
                seconds = (generated_seconds(kernel, wl, target, args.gpu_folder) if generated
                           else compile_seconds(wl, target))
                r = {"problem": problem.name, "target": kind, "algorithm": wl.algorithm, "nnz": int(kernel.nnz), **seconds}
                rows.append(r)
                print(f"{problem.name:40s} {kind:5s} {wl.algorithm:18s} {r.get('tile', ''):12s} {r['total_s']:6.1f} s",
                      flush=True)
    worst = max(rows, key=lambda r: r["total_s"])
    result = {
        "script": "benchmarks/experiments/compile_time.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average_after": os.getloadavg(), "tvm": tvm.__version__, "sets": args.sets,
        "cpu_target": str(targets.host_cpu_target()), "gpu_folder": str(args.gpu_folder.relative_to(ROOT)), "rows": rows,
        "worst": worst, "layers_over_30_s": sum(r["total_s"] > 30 for r in rows),
    }
    out = args.out or Path(__file__).with_name(
        f"compile_time-{targets.target_folder_name(targets.host_cpu_target())}-{os.cpu_count()}cores.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"worst {worst['problem']} {worst['target']} {worst['algorithm']}: {worst['total_s']:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
