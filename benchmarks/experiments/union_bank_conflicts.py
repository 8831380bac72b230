"""Shared-memory wavefronts of union-tf32's A-fragment loads, per layer (no GPU).

    python benchmarks/experiments/union_bank_conflicts.py --layers resnet50_network_s90_b32_g8 \
        --json benchmarks/experiments/union_bank_conflicts-stop49.json

An A-fragment load reads 8 output pixels x an aligned quad of 4 union positions (taps) from the
staged input tile; a wavefront serves one distinct address per bank of 32, so a load takes as
many wavefronts as the most distinct addresses any bank gets (1 at best). For each layer this
packs the block-pruned kernel as `compile(..., precision="tf32")` does (`union_tf32.pack_union`)
and averages over the k steps that run:

- `by_phase`: the staged layout of `union_tf32` (strided columns by phase, `column_phases`), where
  consecutive output pixels are one staged position apart;
- `column_order`: the input's own column order, as the layout was until stop 49, where they are
  `stride` positions apart and the taps' kw offsets are `kw * dw` positions (the same unions,
  quads spread by `bank_spread` on those offsets).

ncu counted 40% of conv4 3x3 b32 g8's shared wavefronts as excess at 1.75 a load (stop 43).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tvm_sparseconv.algorithms import union_tf32  # noqa: E402
from tvm_sparseconv.kernel import SparseKernel  # noqa: E402
from tvm_sparseconv.workload import ConvWorkload  # noqa: E402
from tvm_sparseconv.workloads import workload_set  # noqa: E402


def wavefronts(quad: np.ndarray, position_words: int) -> int:
    """Wavefronts of one A-fragment load: 8 pixel rows `position_words` apart x the quad's taps."""
    addresses = np.add.outer(np.arange(8) * position_words, quad).ravel()
    return max(len(set(addresses[addresses % 32 == bank])) for bank in range(32))


def _mean_wavefronts(kernel: SparseKernel, wl: ConvWorkload, code, position_words: int) -> float:
    """Mean over the (group, chunk, quad)s of the k steps that run, taps laid out as packing does."""
    unions = union_tf32.group_unions(kernel, wl.chunk, code)
    loads = []
    for per_chunk in unions:
        for union in per_chunk:
            steps = union_tf32.own_steps(union)
            taps, _ = union_tf32.bank_spread(union, wl.ell_width, wl.chunk, used=steps * union_tf32.K_STEP)
            loads += [wavefronts(taps[i:i + 4], position_words) for i in range(0, steps * union_tf32.K_STEP, 4)]
    return float(np.mean(loads)) if loads else 0.0


def column_order_code(wl: ConvWorkload) -> tuple[tuple[int, ...], int]:
    """The tap code of the input's own column order: kw at ``kw*dw`` positions, a box row
    ``(tiles*16 - 1)*sw + ew`` positions (or the image's width)."""
    words = union_tf32.staged_row_words(wl.chunk)
    (_, ew), (_, sw), (dh, dw) = wl.kernel_extent, wl.strides, wl.dilations
    if union_tf32.whole_images(wl):
        width = wl.gather_hw[1]
    else:
        _, tiles = union_tf32.block_tiles(wl)
        width = (tiles * union_tf32.M_TILE - 1) * sw + ew
    return tuple(words * dw * kw for kw in range(wl.kernel_shape[1])), words * width * dh


def layer_row(name: str, algorithm: str) -> dict | None:
    (problem,) = workload_set(name)
    kernel = SparseKernel.from_dense(problem.dense_kernel())
    wl = problem.workload(kernel, algorithm=algorithm)
    if union_tf32.is_pointwise(wl.kernel_shape) or union_tf32.block_tiles(wl) is None:
        return None
    words = union_tf32.staged_row_words(wl.chunk)
    return {"layer": name, "algorithm": algorithm, "stride": list(wl.strides), "chunk": wl.chunk,
            "by_phase": round(_mean_wavefronts(kernel, wl, union_tf32.tap_code(wl), words), 3),
            "column_order": round(_mean_wavefronts(kernel, wl, column_order_code(wl), words * wl.strides[1]), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", required=True, help="problem names or workload sets, comma-separated (KxK layers)")
    ap.add_argument("--algorithm", default="union-tf32-async", choices=sorted(union_tf32.STAGED_TILES),
                    help="whose staged boxes (default: union-tf32-async)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    names = [p.name for item in args.layers.split(",") for p in workload_set(item.strip())]
    rows = [r for r in (layer_row(n, args.algorithm) for n in names) if r is not None]
    print(f"{'layer':<34} {'stride':>6} {'by phase':>9} {'column order':>13}  (wavefronts per A-fragment load)")
    for r in rows:
        print(f"{r['layer']:<34} {r['stride'][1]:>6} {r['by_phase']:>9.2f} {r['column_order']:>13.2f}")
    if args.json:
        args.json.write_text(json.dumps({"algorithm": args.algorithm, "layers": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
