#!/usr/bin/env python
"""A whole pruned ResNet-50 in TensorFlow: dense against sparsified, on this machine's CPU.

  python scripts/pruned_resnet50.py                              # 224x224, batch 1, 90% zeros
  python scripts/pruned_resnet50.py --sparsity 0.95 --json benchmarks/results/pruned-resnet50-cpu-znver3-s95.json
  python scripts/pruned_resnet50.py --image-size 64 --repeats 3  # a quick look

Steps: `keras.applications.ResNet50(weights=None)` (random weights: nothing is downloaded; logits
out, so that predictions are compared before a softmax can saturate); every
Conv2D kernel pruned by magnitude to `--sparsity` zeros (per layer, the smallest |w| set to 0);
`tvm_sparseconv.keras.sparsify` times each of its 53 convolutions dense and sparse on this CPU and
swaps those that run faster sparse; then the predictions of the sparsified model are compared with
the pruned dense model's (max relative difference, must be <= 1e-4) and whole-model latency (median,
inside `tf.function` as `model.predict` and serving run it) is timed for both, in turns.
The per-layer table is sparsify's report. Random weights change nothing about speed: only the
positions of the zeros matter, and magnitude pruning of random weights spreads them as pruning does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: largest relative difference between the sparsified and the pruned dense model's predictions
PREDICTION_TOLERANCE = 1e-4


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.9, help="share of zeros per Conv2D kernel (default 0.9)")
    ap.add_argument("--image-size", type=int, default=224, help="input height and width (default 224, min 32)")
    ap.add_argument("--batch", type=int, default=1, help="batch size for timing (default 1)")
    ap.add_argument("--repeats", type=int, default=20, help="timed whole-model calls per model (default 20)")
    ap.add_argument("--layer-repeats", type=int, default=20, help="sparsify's timed calls per layer (default 20)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune-trials", type=int, default=0, metavar="N",
                    help="first tune one layer of each shape that has no record yet (its own or its CPU family's), "
                         "N MetaSchedule trials each (`tvm_sparseconv.keras.tune_layers`; ~40 s per shape on 2 "
                         "cores; default 0: no tuning)")
    ap.add_argument("--inter-op-threads", type=int, default=None,
                    help="TensorFlow's inter-op threads (ops run at once; default: TensorFlow's choice)")
    return ap.parse_args(argv)


def prune_by_magnitude(keras, model, sparsity: float) -> dict[str, float]:
    """Zero the smallest-magnitude `sparsity` share of each Conv2D kernel in place; zeros per layer."""
    import numpy as np

    zeros = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            w = layer.kernel.numpy()
            w[np.abs(w) <= np.quantile(np.abs(w), sparsity)] = 0.0
            layer.kernel.assign(w)
            zeros[layer.name] = 1.0 - np.count_nonzero(w) / w.size
    return zeros


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 0.0 < args.sparsity < 1.0:
        raise SystemExit(f"--sparsity must be a fraction in (0, 1), got {args.sparsity}")
    if args.image_size < 32:
        raise SystemExit(f"--image-size must be >= 32 (ResNet-50's smallest input), got {args.image_size}")
    import numpy as np
    import tensorflow as tf

    if args.inter_op_threads is not None:  # before TensorFlow starts its thread pools
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    from tvm_sparseconv import targets
    from tvm_sparseconv.baselines import interleaved_median_wall
    from tvm_sparseconv.keras import sparsify
    from tvm_sparseconv.keras._flavour import active_keras

    keras = active_keras()
    keras.utils.set_random_seed(args.seed)
    shape = (args.image_size, args.image_size, 3)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; ResNet-50 at {shape}, batch {args.batch}, "
          f"{os.cpu_count()} cores ({cpu_name()})")
    # Logits, not softmax: a saturated softmax of random weights would hide any difference.
    model = keras.applications.ResNet50(weights=None, input_shape=shape, classifier_activation=None)
    zeros = prune_by_magnitude(keras, model, args.sparsity)
    print(f"pruned {len(zeros)} Conv2D kernels to {args.sparsity:.0%} zeros by magnitude")

    tune_s = None
    if args.tune_trials:
        from tvm_sparseconv.keras import tune_layers

        t0 = time.perf_counter()
        tuned = tune_layers(model, trials=args.tune_trials, batch_size=args.batch, per_shape=True, untuned_only=True)
        tune_s = time.perf_counter() - t0
        print(f"tuned {len(tuned)} layer shapes in {tune_s:.0f} s")

    t0 = time.perf_counter()
    fast, report = sparsify(model, batch_size=args.batch, repeats=args.layer_repeats)
    sparsify_s = time.perf_counter() - t0

    x = np.random.default_rng(args.seed + 1).standard_normal((args.batch, *shape)).astype(np.float32)
    ref = model(x, training=False).numpy().astype(np.float64)
    got = fast(x, training=False).numpy()
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    same_top1 = bool((got.argmax(axis=1) == ref.argmax(axis=1)).all())
    t_dense, t_sparse = (t * 1e3 for t in interleaved_median_wall(
        [lambda _i, f=tf.function(m): f(x).numpy() for m in (model, fast)], args.repeats))

    chosen = report.sparse_layers
    timed = [d for d in report.layers if d.dense_ms is not None]
    conv_dense = sum(d.dense_ms for d in timed)
    conv_chosen = sum(min(d.dense_ms, d.sparse_ms) if d.chosen == "sparse" else d.dense_ms for d in timed)
    print(f"\n{len(chosen)} of {len(report.layers)} convolutions sparse (sparsify took {sparsify_s:.0f} s)")
    print(f"predictions, sparsified vs pruned dense: max relative difference {rel:.1e} "
          f"(<= {PREDICTION_TOLERANCE:g}: {rel <= PREDICTION_TOLERANCE}), same top-1: {same_top1}")
    print(f"convolutions (sum of sparsify's per-layer times, each in a graph): dense {conv_dense:.1f} ms, "
          f"chosen {conv_chosen:.1f} ms ({conv_dense / conv_chosen:.2f}x)")
    print(f"whole model, batch {args.batch}, tf.function: dense {t_dense:.1f} ms, sparsified {t_sparse:.1f} ms "
          f"({t_dense / t_sparse:.2f}x)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "script": "scripts/pruned_resnet50.py", "command": " ".join(["python", *sys.argv]),
            "model": "keras.applications.ResNet50(weights=None, classifier_activation=None)",
            "input_shape": [args.batch, *shape],
            "sparsity": args.sparsity, "pruning": "magnitude, per layer", "keras": keras.__version__,
            "tensorflow": tf.__version__, "cpu": cpu_name(), "cores": os.cpu_count(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "cpu_folder": targets.target_folder_name(targets.host_cpu_target()),
            "max_relative_difference": rel, "tolerance": PREDICTION_TOLERANCE, "same_top1": same_top1,
            "model_ms": {"dense": t_dense, "sparsified": t_sparse, "repeats": args.repeats},
            "conv_ms": {"dense": conv_dense, "chosen": conv_chosen},
            "sparse_layers": len(chosen), "conv_layers": len(report.layers), "sparsify_s": sparsify_s,
            "tune_trials": args.tune_trials, "tune_s": tune_s,
            "layers": report.to_dicts(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if rel <= PREDICTION_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
