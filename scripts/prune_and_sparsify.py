#!/usr/bin/env python
"""Train a small CNN, prune it to 90% with tensorflow-model-optimization, sparsify it, compare.

  python scripts/prune_and_sparsify.py                    # scikit-learn's digits, nothing downloaded
  python scripts/prune_and_sparsify.py --epochs 1 --prune-epochs 1 --upsample 2 --json out.json
  python scripts/prune_and_sparsify.py --tune 16       # tune the pruned layers for this CPU first
  python scripts/prune_and_sparsify.py --export exported/  # also export a SavedModel and serve it
                                                          # in a fresh process

Steps: train on scikit-learn's 8x8 digits (upsampled so the convolutions have some size); prune
the Conv2D kernels to 90% zeros with tfmot's `prune_low_magnitude` and fine-tune; `strip_pruning`;
`tvm_sparseconv.keras.sparsify` swaps each Conv2D that runs faster sparse (timed here, on this
machine); then accuracy and predictions of the stripped dense model and the sparsified one are
compared, the sparsified model is saved and loaded back, and whole-model latency is timed. With
`--export DIR` the sparsified model is also exported as a SavedModel (`model.export`) and served by
a new Python process that only imports tensorflow and tvm_sparseconv: its predictions are compared
too. `--convert-all` converts every pruned layer (sparsify with measure=False) instead of timing.

tfmot needs Keras 2 (`tf_keras`), so this script sets TF_USE_LEGACY_KERAS=1 before TensorFlow is
imported. Without tfmot installed (`--no-tfmot` forces it) it prunes by magnitude itself, in Keras 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5, help="dense training epochs (default 5)")
    ap.add_argument("--prune-epochs", type=int, default=4, help="fine-tuning epochs while pruning (default 4)")
    ap.add_argument("--sparsity", type=float, default=0.9, help="target share of zeros (default 0.9)")
    ap.add_argument("--upsample", type=int, default=4, help="digits are 8x8; upsample by this (default 4: 32x32)")
    ap.add_argument("--batch", type=int, default=1, help="batch size for timing (default 1: one image)")
    ap.add_argument("--no-tfmot", action="store_true", help="prune by magnitude here instead of with tfmot")
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                    help="tune each pruned layer for this machine first (TRIALS per layer; default 0: "
                         "no tuning). Records go to tuning_logs/<device>/, or $TVM_SPARSECONV_TUNING_LOGS")
    ap.add_argument("--export", type=Path, default=None, metavar="DIR",
                    help="export the sparsified model as a SavedModel to DIR and serve it in a fresh process")
    ap.add_argument("--convert-all", action="store_true",
                    help="convert every pruned layer instead of keeping the faster of dense and sparse")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    use_tfmot = not args.no_tfmot and importlib.util.find_spec("tensorflow_model_optimization") is not None
    if use_tfmot:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported
    import numpy as np
    import tensorflow as tf

    from tvm_sparseconv.keras import sparsify, tune_layers
    from tvm_sparseconv.keras._flavour import active_keras

    keras = active_keras()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__} ({keras.__name__}), "
          f"pruning with {'tfmot' if use_tfmot else 'magnitude (tfmot not used)'}")
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits(args.upsample, args.seed)

    model = build_cnn(keras, x_train.shape[1:])
    compile_for_training(keras, model)
    print(f"\ntraining on {len(x_train)} digits of {x_train.shape[1]}x{x_train.shape[2]} ...")
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=2)
    dense_acc = accuracy(model, x_test, y_test)

    print(f"\npruning the Conv2D kernels to {args.sparsity:.0%} zeros ...")
    pruned = (prune_with_tfmot if use_tfmot else prune_by_magnitude)(keras, model, x_train, y_train, args)
    pruned_acc = accuracy(pruned, x_test, y_test)
    zeros = {lay.name: 1 - np.count_nonzero(lay.kernel.numpy()) / lay.kernel.numpy().size
             for lay in pruned.layers if isinstance(lay, keras.layers.Conv2D)}
    print("zeros per Conv2D: " + ", ".join(f"{k} {v:.1%}" for k, v in zeros.items()))

    if args.tune:
        print(f"\ntuning the pruned layers for this machine ({args.tune} trials each) ...")
        tune_layers(pruned, trials=args.tune, batch_size=args.batch)

    print("\nsparsify (dense and sparse timed per layer on this machine):")
    fast, report = sparsify(pruned, batch_size=args.batch, measure=not args.convert_all)
    sparse_acc = accuracy(fast, x_test, y_test)
    ref = pruned.predict(x_test, verbose=0).astype(np.float64)
    got = fast.predict(x_test, verbose=0)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sparse.keras"
        fast.save(path)
        loaded = keras.models.load_model(path)
        reload_rel = float(np.abs(loaded.predict(x_test, verbose=0) - got).max() / np.abs(got).max())

    served = None
    if args.export:
        served = export_and_serve(fast, args.export, x_test, got)
        print(f"SavedModel {args.export}: served in a fresh process, {served['tvm_ops']} TvmSparseConv2D op(s), "
              f"max relative difference {served['max_relative_difference']:.1e}")

    batch = x_test[: args.batch]
    t_dense, t_sparse = (median_ms(tf.function(m), batch) for m in (pruned, fast))
    print(f"\naccuracy: dense {dense_acc:.4f} | pruned {pruned_acc:.4f} | pruned + sparsified {sparse_acc:.4f}")
    print(f"predictions, sparsified vs pruned dense: max relative difference {rel:.1e}; "
          f"after save/load {reload_rel:.1e}")
    print(f"whole model, batch {args.batch}: dense {t_dense:.3f} ms, sparsified {t_sparse:.3f} ms "
          f"({t_dense / t_sparse:.2f}x)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "pruning": "tfmot" if use_tfmot else "magnitude", "keras": keras.__name__, "tune_trials": args.tune,
            "image_size": int(x_train.shape[1]), "accuracy": {"dense": dense_acc, "pruned": pruned_acc,
                                                              "sparsified": sparse_acc},
            "zeros": zeros, "max_relative_difference": rel, "after_save_load": reload_rel,
            "model_ms": {"dense": t_dense, "sparsified": t_sparse, "batch": args.batch},
            "layers": report.to_dicts(), "served": served, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1, default=str) + "\n")
    return 0


SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
import tvm_sparseconv  # loads the op library: all a fresh process needs
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], loaded.serve(tf.constant(x)).numpy())
graph = loaded.serve.get_concrete_function(tf.TensorSpec([None, *x.shape[1:]], tf.float32)).graph.as_graph_def()
ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
print(json.dumps({"tvm_ops": ops.count("TvmSparseConv2D"),
                  "py_function_ops": sum(o in ("EagerPyFunc", "PyFunc", "PyFuncStateless") for o in ops)}))
"""


def export_and_serve(model, export_dir: Path, x, expected) -> dict:
    """`model.export(export_dir)`, then a new Python process loads and calls it on `x`."""
    import subprocess

    import numpy as np

    model.export(str(export_dir))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        out = Path(tmp) / "y.npy"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                             os.environ.get("PYTHONPATH", "")])}
        env.pop("TF_USE_LEGACY_KERAS", None)  # the server needs no Keras at all
        proc = subprocess.run([sys.executable, "-c", SERVE, str(export_dir), str(Path(tmp) / "x.npy"), str(out)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"serving the SavedModel in a fresh process failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        y = np.load(out)
    result["max_relative_difference"] = float(np.abs(y - expected).max() / np.abs(expected).max())
    return result


def load_digits(upsample: int, seed: int):
    """scikit-learn's digits (shipped with the package), NHWC float32 in [0, 1], 75/25 split."""
    import numpy as np
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((1, upsample, upsample), np.float32))[..., None]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], data.target[order].astype(np.int32)
    cut = len(x) * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def build_cnn(keras, input_shape):
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(x))


def prune_with_tfmot(keras, model, x, y, args):
    """tfmot's prune_low_magnitude on the Conv2D layers, fine-tuned, then strip_pruning."""
    import tensorflow_model_optimization as tfmot

    steps = args.prune_epochs * -(-len(x) // 32)
    # from half the target to the target over the first half of fine-tuning, then hold it
    schedule = tfmot.sparsity.keras.PolynomialDecay(args.sparsity / 2, args.sparsity, begin_step=0,
                                                    end_step=max(steps // 2, 1), frequency=max(steps // 20, 1))

    def wrap(layer):
        if isinstance(layer, keras.layers.Conv2D):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # tfmot's recipe: the wrappers and the other layers keep the trained weights (shared with `model`).
    wrapped = keras.models.clone_model(model, clone_function=wrap)
    compile_for_training(keras, wrapped)
    wrapped.fit(x, y, epochs=args.prune_epochs, batch_size=32, verbose=2,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def prune_by_magnitude(keras, model, x, y, args):
    """Without tfmot: zero the smallest weights of each Conv2D, fine-tune with the mask kept."""
    import numpy as np

    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    convs = [lay for lay in pruned.layers if isinstance(lay, keras.layers.Conv2D)]
    masks = {}
    for lay in convs:
        w = lay.kernel.numpy()
        masks[lay.name] = np.abs(w) > np.quantile(np.abs(w), args.sparsity)

    class KeepMask(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for lay in convs:
                lay.kernel.assign(lay.kernel.numpy() * masks[lay.name])

    KeepMask().on_train_batch_end(0)
    compile_for_training(keras, pruned)
    pruned.fit(x, y, epochs=args.prune_epochs, batch_size=32, verbose=2, callbacks=[KeepMask()])
    return pruned


def compile_for_training(keras, model) -> None:
    model.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def accuracy(model, x, y) -> float:

    return float((model.predict(x, verbose=0).argmax(axis=1) == y).mean())


def median_ms(fn, x, repeats: int = 50) -> float:
    from tvm_sparseconv.baselines import median_wall

    return median_wall(lambda _i: fn(x).numpy(), repeats, warmup=3) * 1e3


if __name__ == "__main__":
    sys.exit(main())
