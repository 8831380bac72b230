#!/usr/bin/env python
"""Does TVM's spinning thread pool slow a TensorFlow model that calls tvm_sparseconv kernels?

  python benchmarks/experiments/tvm_spin_in_tf.py --rounds 2
  python benchmarks/experiments/tvm_spin_in_tf.py --image-size 64 --rounds 1   # quick

Runs `scripts/pruned_resnet50.py` (sparsify a 90%-pruned ResNet-50, then time the dense and the
sparsified model in turns inside one process) once per setting of TVM_THREAD_POOL_SPIN_COUNT per
round, settings alternating: TVM's default (300000 spins after each kernel) and 0 (workers sleep
at once; tvm_sparseconv's default since this experiment). Writes the model times of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"tvm-default-300000": "300000", "tvm_sparseconv-default-0": "0"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tvm_spin_in_tf.json"))
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, spin in SETTINGS.items():
                out = Path(tmp) / f"{name}-{r}.json"
                env = dict(os.environ, TVM_THREAD_POOL_SPIN_COUNT=spin)
                cmd = [sys.executable, str(ROOT / "scripts" / "pruned_resnet50.py"), "--image-size",
                       str(args.image_size), "--repeats", str(args.repeats), "--json", str(out)]
                print(f"round {r + 1}/{args.rounds}, TVM_THREAD_POOL_SPIN_COUNT={spin} ...", flush=True)
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                res = json.loads(out.read_text())
                runs.append({"setting": name, "spin_count": int(spin), "round": r, **res["model_ms"],
                             "sparse_layers": res["sparse_layers"], "conv_ms": res["conv_ms"]})
                print(f"  dense {res['model_ms']['dense']:.1f} ms, sparsified {res['model_ms']['sparsified']:.1f} ms")
    args.out.write_text(json.dumps({"image_size": args.image_size, "cores": os.cpu_count(), "runs": runs,
                                    "load_average_after": os.getloadavg(),
                                    "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
