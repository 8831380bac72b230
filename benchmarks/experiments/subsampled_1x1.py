#!/usr/bin/env python
"""Strided 1x1 layers on this CPU: computed on a copy of the pixels they read (the default since
stop 31; since stop 33 the one-phase case of `stride_phases`) against strided reads (before), in turns. (tf.nn.conv2d on
these layers: `scripts/bench.py`; not in this process, whose timing its threads would disturb.)

  python benchmarks/experiments/subsampled_1x1.py --json benchmarks/experiments/subsampled_1x1-cpu-znver4.json

Layers: ResNet-50 v1.5's three stride-2 projections (the benchmark sets' `*_proj_s2_b1`) and the
three stride-2 1x1 reductions of Keras's ResNet50 (v1: the stride sits on the block's first 1x1).
Each op is checked against float64 on a NaN-poisoned output before it is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KERAS_V1 = [  # (name, input hw, cin, cout): Keras ResNet50's strided first 1x1 of conv3-5
    ("keras_conv3_block1_1_s2_b1", 56, 256, 128),
    ("keras_conv4_block1_1_s2_b1", 28, 512, 256),
    ("keras_conv5_block1_1_s2_b1", 14, 1024, 512),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)

    from stride_phases import compare  # this folder: the same comparison, with more phases
    from tvm_sparseconv.workloads import Problem, workload_set

    problems = [workload_set(f"resnet50_conv{i}_1x1_proj_s2_b1")[0] for i in (3, 4, 5)]
    problems += [Problem(n, (1, hw, hw, cin), (1, 1, cin, cout), 0.1, strides=2) for n, hw, cin, cout in KERAS_V1]
    args.json.write_text(json.dumps(compare(problems, args.repeats, "subsampled"), indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
