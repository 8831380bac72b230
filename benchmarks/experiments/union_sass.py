#!/usr/bin/env python
"""Static instruction counts of union-tf32's kernels (no GPU): what ncu showed bounds them, counted
from the machine code the local nvcc makes for sm_90.

    python benchmarks/experiments/union_sass.py --untuned --layers resnet50_conv2_3x3_b32_g8,resnet50_conv4_3x3_b32_g8

For each layer: the kernel as `compile(..., precision="tf32")` would build it on an H200 (this
device's union-tf32 record if `tuning_logs/nvidia-h200` has one, else the untuned template), or
with `--untuned` the template; its CUDA source compiled to a cubin (`nvcc -arch=sm_90`, as TVM
does), disassembled (`cuobjdump -sass`: on PATH, or PyPI's `nvidia-cuda-cuobjdump`, which the
project's `tools` extra installs), and each loop
(a backward branch and its target) counted: instructions, tensor-core mma (HMMA), global and
shared loads. The loop holding the mma is the k-step loop; its instructions per mma are what
ncu measured on the H200 (stop 42: 93 per 2 mma in conv4 3x3 b32 g8's tuned kernel,
`union_tf32.md`), so a schedule change can be judged here before a GPU run times it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import tvm_sparseconv as tsc
from tvm_sparseconv import algorithms, targets, tuning_records
from tvm_sparseconv.schedules import default_rule
from tvm_sparseconv.tir_build import compile_tir, without_step_skipping
from tvm_sparseconv.workloads import workload_set

ALGORITHM = "union-tf32"
ARCH = "sm_90"
RECORDS = Path(__file__).resolve().parents[2] / "tuning_logs" / "nvidia-h200"
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, else the one of PyPI's nvidia-cuda-cuobjdump package, else None."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels
    except ImportError:
        return None
    return next((str(p) for root in nvidia.__path__ for p in sorted(Path(root).glob("cu*/bin/cuobjdump"))
                 if (p.parent / "nvdisasm").exists()), None)  # (it runs the nvdisasm beside it)


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of each instruction in `cuobjdump -sass` output."""
    return [(int(m.group(1), 16), m.group(3), m.group(4).strip()) for m in _LINE.finditer(sass)]


def loops(instrs: list[tuple[int, str, str]]) -> list[dict]:
    """Each backward branch's loop: its address range and what it executes per iteration."""
    out = []
    for addr, op, args in instrs:
        target = re.search(r"0x([0-9a-f]+)", args) if op.startswith("BRA") else None
        if target is None or int(target.group(1), 16) > addr:
            continue
        start = int(target.group(1), 16)
        body = [o for a, o, _ in instrs if start <= a <= addr]
        ops = Counter(o.split(".")[0] for o in body)
        out.append({"start": hex(start), "end": hex(addr), "instructions": len(body), "mma": ops["HMMA"],
                    "global_loads": ops["LDG"], "shared_loads": ops["LDS"], "shared_stores": ops["STS"],
                    "ops": dict(ops.most_common())})
    return out


def layer_kernel_source(name: str, untuned: bool, rule=None, records: Path = RECORDS, algorithm: str = ALGORITHM,
                        skip_steps: bool = True) -> tuple[str, str]:
    """(how it was scheduled, CUDA source) of the layer's `algorithm` kernel for sm_90: its record
    in `records` unless `untuned` (`rule`: the template to use where there is no record or
    `untuned`, default the algorithm's own); `skip_steps` False builds it without skipping the
    padding k steps (`tir_build.without_step_skipping`)."""
    (problem,) = workload_set(name)
    kernel = tsc.SparseKernel.from_dense(problem.dense_kernel())
    wl = algorithms.workload_for(kernel, problem.workload(kernel), algorithm)
    target = targets.cuda_target_for_arch(ARCH)
    tuned = None if untuned else tuning_records.find_tuned_schedule(wl, target, records)
    if tuned is not None:
        how, mod = f"tuned record ({records.name})", tuned.schedule.mod
    else:
        rule = rule or default_rule(target, algorithm)
        sch = rule.apply(tuning_records.workload_module(wl)["main"], target, False)
        if sch is None:
            raise SystemExit(f"{name}: the union-tf32 rule declines this layer")
        how, mod = f"{rule.untuned_label()} template", sch.mod
    if not skip_steps:
        how += ", all k steps"
        mod = without_step_skipping(mod)
    lib = compile_tir(mod, target)
    return how, next(m for m in lib.mod.imports if m.kind == "cuda").inspect_source()


def count_layer(name: str, untuned: bool, cuobjdump: str, rule=None, **source) -> dict:
    """The layer's union kernel for sm_90 (`source`: `layer_kernel_source`'s options): its loops,
    and the k-step loop's instructions per mma."""
    how, src = layer_kernel_source(name, untuned, rule, **source)
    with tempfile.TemporaryDirectory() as tmp:
        cu, cubin = Path(tmp) / "k.cu", Path(tmp) / "k.cubin"
        cu.write_text(src)
        subprocess.run(["nvcc", "-cubin", f"-arch={ARCH}", "-O3", "-o", str(cubin), str(cu)], check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    instrs = sass_instructions(sass)
    found = loops(instrs)
    mma_loop = min((lp for lp in found if lp["mma"]), key=lambda lp: lp["instructions"], default=None)
    row = {"layer": name, "kernel": how, "instructions": len(instrs), "loops": found, "k_loop": mma_loop}
    if mma_loop:
        row["k_loop_instructions_per_mma"] = mma_loop["instructions"] / mma_loop["mma"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets, comma-separated")
    ap.add_argument("--untuned", action="store_true", help="the untuned template even where a record exists")
    ap.add_argument("--cuobjdump", default=find_cuobjdump(),
                    help="cuobjdump to disassemble with (default: on PATH, or nvidia-cuda-cuobjdump's)")
    ap.add_argument("--records", type=Path, default=RECORDS,
                    help="tuning-log folder of the records (default: %(default)s)")
    ap.add_argument("--algorithm", default=ALGORITHM, choices=["union-tf32", "union-tf32-async"])
    ap.add_argument("--all-steps", action="store_true", help="build without skipping the padding k steps")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    if not args.cuobjdump or shutil.which("nvcc") is None:
        ap.error("needs nvcc on PATH and a cuobjdump (--cuobjdump; PyPI: nvidia-cuda-cuobjdump)")
    rows = []
    for problem in workload_set(args.layers):
        row = count_layer(problem.name, args.untuned, args.cuobjdump, records=args.records, algorithm=args.algorithm,
                          skip_steps=not args.all_steps)
        rows.append(row)
        k = row["k_loop"]
        print(f"{row['layer']} ({row['kernel']}): {row['instructions']} instructions; k-step loop "
              + (f"{k['instructions']} per {k['mma']} mma ({row['k_loop_instructions_per_mma']:.1f} each), "
                 f"{k['global_loads']} LDG, {k['shared_loads']} LDS" if k else "not found"), flush=True)
        for lp in row["loops"]:
            print(f"    loop {lp['start']}-{lp['end']}: {lp['instructions']} instr, top ops "
                  + ", ".join(f"{o} {c}" for o, c in list(lp["ops"].items())[:8]))
    if args.json:
        args.json.write_text(json.dumps({"arch": ARCH, "layers": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
