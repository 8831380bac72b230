#!/usr/bin/env python
"""Design check (no GPU): how much of a 1x1 layer's dense work union-tf32's mma does, per chunk width.

  python benchmarks/experiments/union_chunk_formats.py --json benchmarks/experiments/union_chunk_formats-b32.json

For each 1x1 layer of the batch-32 network sets, elementwise (`resnet50_network_s90_b32`) and pruned in
blocks of 8 output channels (`resnet50_network_s90_b32_g8`): K / chunk of the union format
(`union_tf32.chunked_format`: the longest group union within a chunk, padded to 8), i.e. the mma's
work relative to the dense layer, for chunks of 64 channels (the format's default until stop 42),
256 (its default since), and all of them (one chunk). The A-fragment loads that bound the kernel
(`union_tf32.md`) scale with it; the staged copy of the input does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvm_sparseconv import SparseKernel
from tvm_sparseconv.algorithms.union_tf32 import chunked_format
from tvm_sparseconv.workloads import NETWORKS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="resnet50_network_s90_b32,resnet50_network_s90_b32_g8",
                    help="network sets, comma-separated (default: %(default)s)")
    ap.add_argument("--chunks", default="64,256,0", help="chunk widths; 0: all input channels (default: %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = []
    for set_name in args.sets.split(","):
        for p in NETWORKS[set_name]:
            if p.kernel_shape[:2] != (1, 1):
                continue
            k = SparseKernel.from_dense(p.dense_kernel())
            fractions = {}
            for chunk in chunks:
                f = chunked_format(k, chunk or k.shape[2])
                fractions[str(chunk or "all")] = {"K": f["ell_width"], "chunk": f["chunk"], "fraction": f["ell_width"] / f["chunk"]}
            rows.append({"set": set_name, "problem": p.name, "count": p.count, "cin": p.kernel_shape[2], "k_over_chunk": fractions})
            print(f"{set_name:<30}{p.name:<40}Cin {p.kernel_shape[2]:>5}  " + "  ".join(
                f"chunk {c}: K {v['K']:>3} = {v['fraction']:.2f}" for c, v in fractions.items()))
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/experiments/union_chunk_formats.py "
                                         + " ".join(argv or []), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
