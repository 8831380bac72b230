"""`sparsify(model)`: a copy of a Keras model whose pruned Conv2D layers run sparse where that is faster.

For each Conv2D: convertible? (float32, channels-last, no groups, a named activation) -> sparse
enough? (`min_sparsity` zeros) -> faster? (with `measure=True`: the dense layer and the sparse one
timed on the layer's real input shape, inside `tf.function` as `model.predict` runs them, less the
fixed cost of a tf.function call, and their outputs compared). Chosen layers become
`SparseConv2D` with the same name and weights; everything else is rebuilt from its config with its
weights copied. With `fold_batchnorm`, a BatchNormalization right after a convolution (and a ReLU
right after that) is folded into its sparse replacement and becomes an identity layer
(`batchnorm.py`); the dense side is then timed as the three layers run. The given model is never
modified.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._warnings import warn_user
from ..algorithms import check_precision
from ..algorithms.base import TOLERANCES
from ..build import UntunedWarning, tune_command
from ._flavour import keras_of
from .batchnorm import chains, folded_layer_class
from .layer import activation_name, sparse_conv2d_class

#: Largest relative difference between the dense and sparse layer outputs that counts as equal
#: where both compute in fp32 (`match_tolerance`).
MATCH_TOLERANCE = 1e-4


def match_tolerance(target: str | None, precision: str) -> float:
    """The largest relative difference between the dense and the sparse layer's outputs that counts
    as equal: `MATCH_TOLERANCE`, or TF32's where either side may round to TF32: the sparse one
    with `precision="tf32"`, the dense one on a GPU while TensorFlow allows TF32 (its default on
    Ampere and newer; each output then differs from the exact one by about 3e-4)."""
    if precision == "tf32":
        return TOLERANCES["tf32"]
    if target == "cuda":
        import tensorflow as tf

        if tf.config.experimental.tensor_float_32_execution_enabled():
            return TOLERANCES["tf32"]
    return MATCH_TOLERANCE


@dataclass
class LayerDecision:
    """What `sparsify` found and chose for one Conv2D layer."""

    name: str
    kernel_shape: tuple[int, ...]
    input_shape: tuple[Any, ...] | None
    density: float | None  # fraction of nonzero kernel entries
    chosen: str  # "sparse" or "dense"
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    tuned: bool | None = None
    tune_command: str | None = field(default=None, repr=False)
    #: layers folded into the sparse one (its BatchNormalization and ReLU)
    folded: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None


@dataclass
class SparsifyReport:
    """The per-layer table of a `sparsify` call (`print(report)` shows it)."""

    layers: list[LayerDecision]
    device: str
    precision: str = "fp32"

    @property
    def sparse_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.chosen == "sparse"]

    def to_dicts(self) -> list[dict]:
        return [asdict(d) | {"speedup": d.speedup} for d in self.layers]

    def __str__(self) -> str:
        if not self.layers:
            return "sparsify: the model has no Conv2D layer; nothing was changed"
        head = (f"{'layer':<18}{'kernel':<16}{'input':<20}{'density':>8}{'dense ms':>10}{'sparse ms':>10}"
                f"{'speed-up':>9}{'tuned':>7}  chosen  why")
        lines = [f"sparsify on {self.device}" + (" (TF32 allowed)" if self.precision == "tf32" else ""), head,
                 "-" * len(head)]
        for d in self.layers:
            def ms(v):
                return f"{v:.3f}" if v is not None else "-"

            lines.append(
                f"{d.name[:17]:<18}{'x'.join(map(str, d.kernel_shape)):<16}"
                f"{'x'.join('?' if v is None else str(v) for v in d.input_shape or ()) or '?':<20}"
                f"{'-' if d.density is None else f'{d.density:.3f}':>8}{ms(d.dense_ms):>10}{ms(d.sparse_ms):>10}"
                f"{'-' if d.speedup is None else f'{d.speedup:.2f}x':>9}"
                f"{'-' if d.tuned is None else ('yes' if d.tuned else 'no'):>7}  {d.chosen:<7} {d.reason}")
        untuned = [d for d in self.layers if d.tuned is False and d.tune_command]
        if untuned:
            lines.append(f"{len(untuned)} layer(s) ran the untuned template; tuning makes them faster, e.g.:")
            lines.append("  " + untuned[0].tune_command)
        return "\n".join(lines)


def unsupported_reason(conv) -> str | None:
    """Why a Conv2D layer cannot run as SparseConv2D, or None if it can."""
    keras = keras_of(conv)
    cfg = conv.get_config()
    if "Transpose" in type(conv).__name__:
        return "transposed convolution"
    if not conv.built:
        return "layer is not built (call the model once or give it an Input)"
    if cfg.get("data_format", "channels_last") != "channels_last":
        return f"data_format {cfg['data_format']!r} (only channels_last)"
    if int(cfg.get("groups", 1)) != 1:
        return f"groups={cfg['groups']} (grouped convolution)"
    dtype = np.dtype(conv.kernel.dtype.name if hasattr(conv.kernel.dtype, "name") else str(conv.kernel.dtype))
    compute = getattr(conv, "compute_dtype", "float32")
    if dtype != np.float32 or str(compute) != "float32":
        return f"dtype {dtype.name}/{compute} (only float32)"
    if str(cfg.get("padding", "valid")).lower() not in ("same", "valid"):
        return f"padding {cfg['padding']!r}"
    try:
        activation_name(conv.activation, keras)
    except ValueError:
        return f"activation {conv.activation!r} is not a named Keras activation"
    return None


def sparsify(model, min_sparsity: float = 0.5, measure: bool = True, batch_size: int = 1,
             target: str | None = None, repeats: int = 20, min_speedup: float = 1.05, verbose: bool = True,
             fold_batchnorm: bool = True, precision: str = "fp32"):
    """A new model in which each pruned Conv2D that runs faster sparse is a `SparseConv2D`.

    `min_sparsity`: smallest fraction of zeros in a kernel to consider it. `measure`: time dense and
    sparse on the layer's input shape (batch `batch_size`) and keep whichever is faster; without it,
    every sparse-enough convertible layer is converted; a measured layer turns sparse only when that is
    at least `min_speedup` times faster (a tie within timing noise stays dense). `target`: None
    (CPU), "cpu" or "cuda". Tuning records are looked up for batch `batch_size`. `fold_batchnorm`:
    a sparse layer takes in the BatchNormalization after it and a ReLU after that (inference: the
    new model's BatchNormalization layers that were folded are identity layers, `FoldedIntoSparse`).
    `precision="tf32"` lets TF32 tensor-core algorithms run the sparse layers where tuned (as
    TensorFlow's own convolutions do by default on Ampere and newer GPUs; `SparseConv2D`).
    Returns `(new_model, report)`; the report's table is printed when `verbose`.
    """
    keras = keras_of(model)
    if keras is None or not isinstance(model, keras.Model):
        raise TypeError(f"sparsify takes a Keras model (Sequential or functional), got {type(model).__name__}")
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be a fraction in [0, 1], got {min_sparsity}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_precision(precision)
    if not model.built:
        raise ValueError("the model is not built: call it once or give it an Input first")
    if not _is_graph_model(model, keras):
        raise TypeError(f"{type(model).__name__} is a subclassed model: sparsify rebuilds Sequential and "
                        "functional models only (convert its Conv2D layers with SparseConv2D.from_conv2d)")
    layer_cls = sparse_conv2d_class(keras)
    decisions: dict[str, LayerDecision] = {}
    replacements: dict[str, Any] = {}
    folds = chains(model, keras) if fold_batchnorm else {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        decision, sparse = _decide(layer, layer_cls, min_sparsity, measure, batch_size, target, repeats,
                                   min_speedup, folds.get(layer.name), precision)
        decisions[layer.name] = decision
        if decision.chosen == "sparse":
            replacements[layer.name] = sparse
            for name in decision.folded:  # now computed by the sparse layer
                replacements[name] = folded_layer_class(keras)(name=name)

    shared: list[str] = []

    def clone(layer):
        if layer.name in replacements:
            return replacements[layer.name]
        try:
            return layer.__class__.from_config(layer.get_config())
        except (TypeError, ValueError):  # e.g. a lambda activation: its config cannot be rebuilt
            shared.append(layer.name)
            return layer

    new_model = keras.models.clone_model(model, clone_function=clone)
    new_layers = {lay.name: lay for lay in new_model.layers}
    for layer in model.layers:
        if layer.name not in replacements and layer.name not in shared and layer.weights:
            new_layers[layer.name].set_weights(layer.get_weights())
    if shared:
        warn_user(f"sparsify: layer(s) {shared} cannot be rebuilt from their config (e.g. a lambda "
                  "activation), so the new model shares them with the original", UserWarning)
    report = SparsifyReport(list(decisions.values()), "cuda" if target == "cuda" else "cpu", precision)
    if not decisions:
        warn_user("sparsify: the model has no Conv2D layer; returning an unchanged copy", UserWarning)
    elif verbose:
        print(report)
    return new_model, report


def _is_graph_model(model, keras) -> bool:
    if isinstance(model, keras.Sequential):
        return True
    functional = getattr(getattr(keras, "src", None), "models", None)
    cls = getattr(getattr(functional, "functional", None), "Functional", None)
    if cls is not None:
        return isinstance(model, cls)
    return bool(getattr(model, "_is_graph_network", False))


def _decide(layer, layer_cls, min_sparsity, measure, batch_size, target, repeats, min_speedup, chain=None,
            precision="fp32"):
    """(decision, the sparse layer or None) for one Conv2D; `chain`: its BatchNormalization (and
    ReLU) to fold into the sparse layer, the dense side then timed as conv, BatchNormalization
    and ReLU."""
    kernel = np.asarray(layer.kernel.numpy()) if layer.built else None
    shape = tuple(int(d) for d in layer.kernel.shape) if layer.built else ()
    in_shape = layer_input_shape(layer)

    def decision(chosen, reason, **kw):
        density = None if kernel is None else float(np.count_nonzero(kernel)) / kernel.size
        return LayerDecision(layer.name, shape, in_shape, density, chosen, reason, **kw)

    reason = unsupported_reason(layer)
    if reason:
        return decision("dense", f"unsupported: {reason}"), None
    sparsity = 1.0 - np.count_nonzero(kernel) / kernel.size
    if sparsity < min_sparsity:
        return decision("dense", f"{sparsity:.0%} zeros < min_sparsity {min_sparsity:.0%}"), None
    if chain is None:
        sparse, dense, folded = layer_cls.from_conv2d(layer, target=target, precision=precision), layer, []
    else:
        sparse = layer_cls.from_conv2d(layer, target=target, batchnorm=chain.batchnorm, activation=chain.activation,
                                       precision=precision)
        dense, folded = _chain_call(layer, chain), chain.layer_names
    note = f" ({' + '.join(folded)} folded in)" if folded else ""
    if not measure:
        return decision("sparse", f"{sparsity:.0%} zeros (not timed){note}", folded=folded), sparse
    if in_shape is None or any(d is None for d in in_shape[1:]):
        return decision("dense", "input size unknown, cannot time it (give the model a fixed-size Input "
                                 "or use measure=False)"), None
    x_shape = (batch_size, *in_shape[1:])
    dense_s, sparse_s, err, tuned, command = _time_both(dense, sparse, x_shape, repeats)
    timed = dict(dense_ms=dense_s * 1e3, sparse_ms=sparse_s * 1e3, tuned=tuned, tune_command=command)
    if not err <= match_tolerance(target, precision):
        return decision("dense", f"sparse output differs (rel. error {err:.1e}): kept dense", **timed), None
    if sparse_s * min_speedup > dense_s:
        why = "dense is faster" if sparse_s >= dense_s else f"sparse faster by less than {min_speedup:.2f}x"
        return decision("dense", why, **timed), None
    return decision("sparse", f"{sparsity:.0%} zeros, faster{note}", folded=folded, **timed), sparse


def _chain_call(conv, chain):
    """The dense layers of `chain` as one callable: conv, its BatchNormalization at inference, the ReLU."""
    def call(x):
        y = chain.batchnorm(conv(x), training=False)
        return y if chain.relu is None else chain.relu(y)
    return call


def layer_input_shape(layer) -> tuple | None:
    """The layer's NHWC input shape in its model (None entries where unknown), or None."""
    try:
        return tuple(None if d is None else int(d) for d in layer.input.shape)
    except (AttributeError, ValueError, TypeError):
        shape = getattr(layer, "input_shape", None)  # tf_keras
        return tuple(shape) if isinstance(shape, tuple) and len(shape) == 4 else None


#: calls of a layer per timed graph (`_time_both`)
IN_GRAPH_CALLS = 8


def _time_both(dense_layer, sparse_layer, x_shape, repeats: int):
    """Each layer's time per call inside a graph, as a model runs it, and their difference.

    One `tf.function` runs the layer `IN_GRAPH_CALLS` times, one call after the other (control
    dependencies), each on a differently scaled copy of one random input so that TensorFlow cannot
    merge them; the same graph with the scaling alone is subtracted, and the three are timed in turns.
    A layer timed alone, one call per `tf.function`, overstated this library's layers by 0.2-0.5 ms
    per call on a 2-core CPU: in ResNet-50, 3x3 layers that looked 1.25-2.3x faster alone were
    0.9-2.0x in a graph (`benchmarks/experiments/whole_model_layers.md`).
    """
    import tensorflow as tf

    from ..baselines import interleaved_median_wall
    from ..reference import relative_error

    x = tf.constant(np.random.default_rng().standard_normal(x_shape, dtype=np.float32))
    scales = [1.0 + i * 2.0 ** -12 for i in range(IN_GRAPH_CALLS)]

    def in_graph(layer):
        def run(t):
            outs = []
            for s in scales:
                with tf.control_dependencies(outs[-1:]):
                    outs.append(layer(t * s))
            return outs
        return tf.function(run)

    with warnings.catch_warnings():  # the report says which layers are untuned, once
        warnings.simplefilter("ignore", UntunedWarning)
        op = sparse_layer.compiled(x_shape, on_cuda=sparse_layer.target == "cuda")
    command = None if op.tuned else tune_command(op.layer_workload, op.target).replace(
        "kernel.save(", f"SparseKernel.from_dense(model.get_layer({sparse_layer.name!r}).kernel.numpy()).save(", 1)
    fns = [in_graph(tf.identity), in_graph(dense_layer), in_graph(sparse_layer)]
    # the first call of each graph has scale 1: the sparse layer as a model's graph runs it
    err = relative_error(fns[2](x)[0].numpy(), fns[1](x)[0].numpy().astype(np.float64))
    base, dense, sparse = interleaved_median_wall([lambda _i, f=f: _sync(f(x)[-1]) for f in fns], repeats)
    floor = 1e-6  # a layer never costs less than a microsecond, whatever the noise in `base`
    return (max((dense - base) / IN_GRAPH_CALLS, floor), max((sparse - base) / IN_GRAPH_CALLS, floor), err,
            op.tuned, command)


def _sync(y):
    """Wait for `y` (a GPU op returns before it finishes; a CPU one does not)."""
    if "GPU" in y.device:
        import tensorflow as tf

        tf.test.experimental.sync_devices()
    return y

