"""Many random draws from the CUDA design spaces, each run in the CUDA emulator against float64.

CI emulates 3 draws per design with fixed seeds (`tests/test_cuda_emulated.py`); this sweeps more
and different ones, to find the corners of a space that store past an array or compute wrong
numbers before tuning draws them (on a GPU, tuning checks only its best few candidates). Each
layer of `tests/cuda_cases.py`'s FUZZ_CASES, each CUDA algorithm with a design space but union-tf32
(its mma was not emulated when the committed JSON was written; CI draws from its space since stop
40), `--rounds` rounds of `--draws` draws per design.

    python benchmarks/experiments/emulated_design_spaces.py --rounds 4 --json benchmarks/experiments/emulated_design_spaces.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv import algorithms, reference, targets  # noqa: E402
from tvm_sparseconv.cuda_emulator import EmulatedFault, EmulationUnsupported, emulate  # noqa: E402
from tvm_sparseconv.workload import ConvWorkload  # noqa: E402

from cuda_cases import FUZZ_CASES, sampled_candidates, sparse_kernel  # noqa: E402

ALGORITHMS = [a.name for a in algorithms.ALGORITHMS.values()
              if not a.generated and a.applies(None, "cuda") and a.name != "union-tf32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds over every (layer, algorithm)")
    ap.add_argument("--draws", type=int, default=3, help="draws per design and round")
    ap.add_argument("--seed", type=int, default=10_000, help="first seed (CI uses seeds below 1,000)")
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = ap.parse_args()
    target = targets.cuda_target_for_arch("sm_90")
    start, ran, bad, unsupported = time.time(), 0, [], []
    for rnd in range(args.rounds):
        for i, (shape, kshape, density, strides, padding, dil) in enumerate(FUZZ_CASES):
            for alg in ALGORITHMS:
                rng = np.random.default_rng(args.seed + 1000 * rnd + 10 * i + ALGORITHMS.index(alg))
                w = sparse_kernel(rng, kshape, density)
                k = tsc.SparseKernel.from_dense(w)
                wl = algorithms.workload_for(k, ConvWorkload.create(shape, kshape, k.ell_width, strides, padding, dil),
                                             alg)
                if not algorithms.by_name(alg).applies(wl, "cuda"):
                    continue
                inputs = [rng.standard_normal(shape).astype(np.float32), *algorithms.pack_weights(wl, k)]
                ref = reference.conv2d_f64(inputs[0], w, wl)
                for sch in sampled_candidates(wl, target, rng, args.draws):
                    ran += 1
                    out = np.full(wl.output_shape, np.nan, np.float32)
                    decisions = [str(d) for d in sch.trace.decisions.values()]
                    try:
                        emulate(sch.mod, target)(*inputs, out)
                        err = reference.relative_error(out, ref)
                        if not err <= algorithms.by_name(alg).tolerance:
                            bad.append({"round": rnd, "layer": i, "algorithm": alg, "error": err, "decisions": decisions})
                    except EmulatedFault as e:
                        bad.append({"round": rnd, "layer": i, "algorithm": alg, "fault": str(e), "decisions": decisions})
                    except EmulationUnsupported as e:  # e.g. a warp shuffle: not emulated
                        ran -= 1
                        unsupported.append({"round": rnd, "layer": i, "algorithm": alg, "why": str(e)[:200],
                                            "decisions": decisions})
                    if bad and bad[-1].get("decisions") is decisions:
                        print(bad[-1], flush=True)
        print(f"round {rnd + 1}/{args.rounds}: {ran} candidates, {len(bad)} wrong or faulting, "
              f"{len(unsupported)} not emulated, {time.time() - start:.0f} s", flush=True)
    args.json.write_text(json.dumps({"candidates": ran, "wrong_or_faulting": len(bad), "not_emulated": len(unsupported),
                                     "seconds": time.time() - start, "failures": bad, "unsupported": unsupported,
                                     "rounds": args.rounds, "draws": args.draws, "seed": args.seed},
                                    indent=1) + "\n")


if __name__ == "__main__":
    main()
