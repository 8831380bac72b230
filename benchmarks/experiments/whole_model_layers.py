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
Then, per stride-1 3x3 layer of each stage: the layer alone in a `tf.function` (as `sparsify` times
it, the identity function's time subtracted) and 8 dependent calls chained in one `tf.function`
(per call; as in a model, the fixed cost of a call paid once), dense and sparse, in turns.
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


CHAINED = [("conv2_block2_2_conv", (1, 56, 56, 64)), ("conv3_block2_2_conv", (1, 28, 28, 128)),
           ("conv4_block2_2_conv", (1, 14, 14, 256)), ("conv5_block2_2_conv", (1, 7, 7, 512))]


def chained_layer_times(tf, layer, layer_cls, shape, repeats: int) -> dict:
    """ms per call of `layer` dense and sparse: alone in a tf.function, and 8 chained in one."""
    from tvm_sparseconv.baselines import interleaved_median_wall

    import numpy as np

    sparse = layer_cls.from_conv2d(layer)
    x = tf.constant(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))

    def chain(f):
        def run(t):
            for _ in range(8):
                t = f(t) * 0.01  # dependent calls (Cin == Cout), kept in range
            return t
        return tf.function(run)

    fns = [tf.function(tf.identity), tf.function(layer), tf.function(sparse), chain(layer), chain(sparse)]
    base, dense, sp, dense8, sp8 = interleaved_median_wall([lambda _i, f=f: f(x).numpy() for f in fns], repeats)
    row = {"layer": layer.name, "input_shape": list(shape), "alone_dense_ms": (dense - base) * 1e3,
           "alone_sparse_ms": (sp - base) * 1e3, "chained_dense_ms": (dense8 - base) * 1e3 / 8,
           "chained_sparse_ms": (sp8 - base) * 1e3 / 8}
    print(f"{layer.name}: alone dense {row['alone_dense_ms']:.2f} sparse {row['alone_sparse_ms']:.2f} ms; "
          f"chained dense {row['chained_dense_ms']:.2f} sparse {row['chained_sparse_ms']:.2f} ms per call", flush=True)
    return row


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
    per_layer = [chained_layer_times(tf, model.get_layer(name), layer_cls, shape, args.repeats)
                 for name, shape in CHAINED]
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/experiments/whole_model_layers.py " + " ".join(argv or sys.argv[1:]),
            "cpu": cpu_name(), "cores": os.cpu_count(),
            "cpu_folder": targets.target_folder_name(targets.host_cpu_target()),
            "tensorflow": tf.__version__, "keras": keras.__version__, "sparsity": args.sparsity,
            "repeats": args.repeats, "variants": rows, "layers_alone_and_chained": per_layer,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
