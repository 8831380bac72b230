"""Where a sparsified ResNet-50's time goes on the CPU: whole-model latency with chosen sets of layers sparse.

`sparsify` decides per layer from isolated timings (each layer called alone), and on the 2-core
znver3 machine those did not predict the model: the convolutions' isolated sums were 160 ms dense
against 95 ms chosen, yet the whole models took 85.7 ms dense and 91.1 ms sparsified
(`benchmarks/results/pruned-resnet50-cpu-znver3.json`). This times whole models (inside
`tf.function`, in turns, median) in which only one kind of layer is sparse, so the in-graph gain or
loss of each kind is measured where it counts:

    python benchmarks/experiments/whole_model_layers.py --json benchmarks/experiments/whole_model_layers-cpu-znver3.json

Variants: dense; all 3x3 layers sparse; the stride-1 1x1 layers sparse; conv1 (7x7) sparse; every
convertible layer sparse. Same pruned model (90% by magnitude, random weights), batch 1, 224x224.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

VARIANTS = {
    "dense": lambda layer: False,
    "3x3 sparse": lambda layer: tuple(layer.kernel.shape[:2]) == (3, 3),
    "1x1 stride-1 sparse": lambda layer: tuple(layer.kernel.shape[:2]) == (1, 1) and tuple(layer.strides) == (1, 1),
    "conv1 7x7 sparse": lambda layer: tuple(layer.kernel.shape[:2]) == (7, 7),
    "all sparse": lambda layer: True,
}


def with_sparse_layers(keras, model, layer_cls, chosen) -> tuple[object, list[str]]:
    """A copy of `model` whose Conv2D layers for which `chosen(layer)` holds are `SparseConv2D`."""
    replacements = {layer.name: layer_cls.from_conv2d(layer) for layer in model.layers
                    if isinstance(layer, keras.layers.Conv2D) and chosen(layer)}

    def clone(layer):
        return replacements.get(layer.name) or layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    by_name = {lay.name: lay for lay in new.layers}
    for layer in model.layers:
        if layer.name not in replacements and layer.weights:
            by_name[layer.name].set_weights(layer.get_weights())
    return new, sorted(replacements)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per model, in turns")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from pruned_resnet50 import cpu_name, prune_by_magnitude
    from tvm_sparseconv import targets
    from tvm_sparseconv.baselines import interleaved_median_wall
    from tvm_sparseconv.keras._flavour import active_keras
    from tvm_sparseconv.keras.layer import sparse_conv2d_class

    keras = active_keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    prune_by_magnitude(keras, model, args.sparsity)
    layer_cls = sparse_conv2d_class(keras)
    x = np.random.default_rng(1).standard_normal((1, 224, 224, 3)).astype(np.float32)
    ref = model(x, training=False).numpy()

    models, rows = [], []
    for name, chosen in VARIANTS.items():
        t0 = time.perf_counter()
        m, sparse = with_sparse_layers(keras, model, layer_cls, chosen)
        f = tf.function(m)
        got = f(x).numpy()
        rows.append({"variant": name, "sparse_layers": len(sparse), "build_s": round(time.perf_counter() - t0, 1),
                     "max_relative_difference": float(np.abs(got - ref).max() / np.abs(ref).max())})
        models.append(f)
        print(f"built {name}: {len(sparse)} sparse layers ({rows[-1]['build_s']} s)", flush=True)
    times = interleaved_median_wall([lambda _i, f=f: f(x).numpy() for f in models], args.repeats)
    for row, t in zip(rows, times):
        row["model_ms"] = t * 1e3
        print(f"{row['variant']:22s} {row['sparse_layers']:3d} sparse layers: {row['model_ms']:7.1f} ms "
              f"(max rel. diff {row['max_relative_difference']:.1e})")
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/experiments/whole_model_layers.py " + " ".join(argv or sys.argv[1:]),
            "cpu": cpu_name(), "cores": os.cpu_count(),
            "cpu_folder": targets.target_folder_name(targets.host_cpu_target()),
            "tensorflow": tf.__version__, "keras": keras.__version__, "sparsity": args.sparsity,
            "repeats": args.repeats, "variants": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
