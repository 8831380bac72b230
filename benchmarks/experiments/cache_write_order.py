"""Does moving a CUDA schedule's register cache_write before its loop splits change any code we ship?

`schedules.common.with_cache_writes_first` (applied to every CUDA record's replay) and the
cuda-ell-* rules (which now make their cache_write first) exist because a cache_write made after a
split that does not divide stores the padded range past the output (`cuda_emulator.md`). This
script checks, without a GPU, that the reorder changes nothing else:

- every committed CUDA record: the CUDA source of its trace as stored vs reordered;
- every untuned CUDA rule on the GPU tests' layers (`tests/cuda_cases.py`): the CUDA source of the
  rule's trace vs the same trace with its cache_write moved late (the order before the fix);
  where the two differ, both run in the CUDA emulator (the late one should fault or be wrong).

    python benchmarks/experiments/cache_write_order.py --json benchmarks/experiments/cache_write_order.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv import algorithms, reference, targets, tuning_records  # noqa: E402
from tvm_sparseconv.cuda_emulator import EmulatedFault, EmulationUnsupported, emulate  # noqa: E402
from tvm_sparseconv.schedules import rules_for  # noqa: E402
from tvm_sparseconv.schedules.common import with_cache_writes_first  # noqa: E402
from tvm_sparseconv.tir_build import compile_tir  # noqa: E402
from tvm_sparseconv.workload import ConvWorkload  # noqa: E402

from cuda_cases import CASES, FUZZ_CASES, replayed, sparse_kernel, with_late_cache_write  # noqa: E402


def _source(mod, target) -> str:
    return next(m for m in compile_tir(mod, target).mod.imports if m.kind == "cuda").inspect_source()


def _emulated_error(mod, target, wl, w, inputs) -> str:
    out = np.full(wl.output_shape, np.nan, np.float32)
    try:
        emulate(mod, target)(*inputs, out)
    except EmulatedFault as e:
        return f"fault: {e}"
    except EmulationUnsupported as e:
        return f"not emulated: {e}"
    return f"relative error {reference.relative_error(out, reference.conv2d_f64(inputs[0], w, wl)):.2e}"


def records() -> list[dict]:
    rows = []
    for folder in sorted(p for p in (ROOT / "tuning_logs").iterdir() if p.is_dir()):
        meta = tuning_records.read_meta(folder) or {}
        if meta.get("target", {}).get("kind") != "cuda":
            continue
        target = targets.cuda_target_for_arch(meta["target"]["arch"])
        db = tuning_records._open_database(folder, meta)
        for e in meta["entries"]:
            wl = ConvWorkload.from_json(e["workload"])
            rec = db.query_tuning_record(tuning_records.workload_module(wl), target, "main")
            moved = with_cache_writes_first(rec.trace)
            row = {"folder": folder.name, "problem": e["problem"], "rule": e.get("rule"), "reordered": moved is not None}
            if moved is not None:
                func = tuning_records.workload_module(wl)
                row["same_cuda"] = (_source(replayed(rec.trace, func).mod, target)
                                    == _source(replayed(moved, func).mod, target))
            rows.append(row)
            print(row, flush=True)
    return rows


def untuned() -> list[dict]:
    target = targets.cuda_target_for_arch("sm_90")
    rows = []
    layers = CASES + [c + (False, None) for c in FUZZ_CASES]
    for rule in rules_for(target):
        for i, (shape, kshape, density, strides, padding, dil, bias, act) in enumerate(layers):
            rng = np.random.default_rng(i)
            w = sparse_kernel(rng, kshape, density)
            k = tsc.SparseKernel.from_dense(w)
            wl = algorithms.workload_for(k, ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil),
                                         rule.algorithm)
            func = tuning_records.workload_module(wl)["main"]
            sch = rule.apply(func, target, False)
            late = with_late_cache_write(sch.trace) if sch is not None else None
            if late is None:
                continue
            old = replayed(late, tuning_records.workload_module(wl))
            row = {"rule": rule.name, "layer": i, "same_cuda": _source(sch.mod, target) == _source(old.mod, target)}
            if not row["same_cuda"]:
                inputs = [rng.standard_normal(shape).astype(np.float32), *algorithms.pack_weights(wl, k)]
                row["now"] = _emulated_error(sch.mod, target, wl, w, inputs)
                row["late"] = _emulated_error(old.mod, target, wl, w, inputs)
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = ap.parse_args()
    rec, unt = records(), untuned()
    summary = {"records": len(rec), "records_reordered": sum(r["reordered"] for r in rec),
               "records_with_other_cuda": sum(not r.get("same_cuda", True) for r in rec),
               "untuned_builds": len(unt), "untuned_with_other_cuda": sum(not r["same_cuda"] for r in unt)}
    args.json.write_text(json.dumps({"summary": summary, "records": rec, "untuned": unt}, indent=1) + "\n")
    print(summary)


if __name__ == "__main__":
    main()
