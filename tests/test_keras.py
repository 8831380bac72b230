"""Keras integration with Keras 3 (TensorFlow 2.21's default `tf.keras`): the layer, sparsify, save/load.

The tf_keras + tensorflow-model-optimization path runs in its own process (test_keras_tfmot.py),
since TF_USE_LEGACY_KERAS must be set before TensorFlow is imported.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv.keras import SparseConv2D, sparsify  # noqa: E402

from conftest import prune_layer as prune, rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::tvm_sparseconv.UntunedWarning")


def small_cnn(rng, sparsity=0.9, input_shape=(20, 18, 3)):
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c_relu")(inp)
    x = keras.layers.Conv2D(12, (5, 3), strides=2, padding="valid", activation="sigmoid", name="c_sigmoid")(x)
    x = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same", use_bias=False, name="c_dilated")(x)
    x = keras.layers.Conv2D(4, 1, activation="relu6", name="c_relu6")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5, name="head")(x))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            prune(layer, rng, sparsity)
    return model


def snapshot(model):
    return [type(lay).__name__ for lay in model.layers], [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=8, kernel_size=3, padding="same", activation="relu"),
        dict(filters=5, kernel_size=(5, 3), strides=(2, 1), padding="valid", activation="relu6"),
        dict(filters=4, kernel_size=3, strides=3, padding="same", use_bias=False),
        dict(filters=6, kernel_size=3, dilation_rate=2, padding="same", activation="tanh"),
    ],
    ids=["relu", "relu6-strided", "stride3-nobias", "dilated-tanh"],
)
def test_layer_matches_conv2d_eager_and_in_graph(kwargs, rng):
    conv = keras.layers.Conv2D(**kwargs)
    x = rng.standard_normal((2, 17, 15, 3)).astype(np.float32)
    conv(x)
    prune(conv, rng)
    ref = conv(x).numpy().astype(np.float64)
    sparse = SparseConv2D.from_conv2d(conv)
    assert rel_err(sparse(tf.constant(x)).numpy(), ref) <= 1e-5
    graph = tf.function(lambda t: sparse(t))
    out = graph(tf.constant(x))
    assert out.shape == ref.shape
    assert rel_err(out.numpy(), ref) <= 1e-5


def test_layer_compiles_once_per_input_shape(rng):
    conv = keras.layers.Conv2D(4, 3, padding="same")
    conv(np.zeros((1, 8, 8, 2), np.float32))
    prune(conv, rng)
    sparse = SparseConv2D.from_conv2d(conv)
    for shape in [(1, 8, 8, 2), (1, 8, 8, 2), (3, 8, 8, 2), (1, 12, 10, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert rel_err(sparse(x).numpy(), conv(x).numpy()) <= 1e-5
    assert len(sparse._tsc_ops) == 3


def test_layer_from_sparse_kernel(rng):
    w = np.where(rng.random((3, 3, 4, 6)) < 0.8, 0, rng.standard_normal((3, 3, 4, 6))).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    layer = SparseConv2D.from_sparse_kernel(tsc.SparseKernel.from_dense(w), bias, padding="same", activation="relu")
    x = rng.standard_normal((1, 9, 7, 4)).astype(np.float32)
    ref = tf.nn.relu(tf.nn.conv2d(x.astype(np.float64), w.astype(np.float64), 1, "SAME") + bias).numpy()
    assert rel_err(layer(x).numpy(), ref) <= 1e-5


def test_sparsify_converts_pruned_layers_and_predicts_the_same(rng):
    model = small_cnn(rng)
    before = snapshot(model)
    new, report = sparsify(model, measure=False, verbose=False)
    assert report.sparse_layers == ["c_relu", "c_sigmoid", "c_dilated", "c_relu6"]
    assert [type(lay).__name__ for lay in new.layers].count("SparseConv2D") == 4
    x = rng.standard_normal((3, 20, 18, 3)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    assert rel_err(new.predict(x, verbose=0), ref) <= 1e-5
    assert rel_err(new(x).numpy(), ref) <= 1e-5
    # the original is untouched
    after = snapshot(model)
    assert before[0] == after[0] and all(np.array_equal(a, b) for a, b in zip(before[1], after[1]))


def test_sparsify_keeps_dense_what_is_not_sparse_enough(rng):
    model = small_cnn(rng)
    prune(model.get_layer("c_sigmoid"), rng, sparsity=0.2)
    new, report = sparsify(model, min_sparsity=0.5, measure=False, verbose=False)
    decision = {d.name: d for d in report.layers}["c_sigmoid"]
    assert decision.chosen == "dense" and "min_sparsity" in decision.reason
    assert type(new.get_layer("c_sigmoid")).__name__ == "Conv2D"
    x = rng.standard_normal((2, 20, 18, 3)).astype(np.float32)
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5


def test_sparsify_measures_and_keeps_the_faster(rng, capsys):
    inp = keras.Input((96, 96, 16))
    x = keras.layers.Conv2D(32, 7, padding="same", name="big")(inp)
    x = keras.layers.Conv2D(4, 1, name="tiny")(x)
    model = keras.Model(inp, x)
    for name in ("big", "tiny"):
        prune(model.get_layer(name), rng)
    new, report = sparsify(model, repeats=5)
    table = capsys.readouterr().out
    assert "big" in table and "dense ms" in table
    for d in report.layers:
        assert d.dense_ms > 0 and d.sparse_ms > 0 and d.tuned is not None
        assert (d.chosen == "sparse") == (d.sparse_ms * 1.05 <= d.dense_ms), d
        assert type(new.get_layer(d.name)).__name__ == ("SparseConv2D" if d.chosen == "sparse" else "Conv2D")
    x = rng.standard_normal((1, 96, 96, 16)).astype(np.float32)
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5


def test_sequential_model_and_save_load_round_trip(rng, tmp_path):
    model = keras.Sequential([
        keras.Input((16, 16, 2)),
        keras.layers.Conv2D(6, 3, activation="relu", name="a"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3, padding="same", name="b"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])
    for name in ("a", "b"):
        prune(model.get_layer(name), rng)
    new, _ = sparsify(model, measure=False, verbose=False)
    path = tmp_path / "sparse.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("a")).__name__ == "SparseConv2D"
    assert loaded.get_layer("b").get_config() == new.get_layer("b").get_config()
    x = rng.standard_normal((4, 16, 16, 2)).astype(np.float32)
    assert rel_err(loaded.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5


def test_set_weights_takes_effect(rng):
    conv = keras.layers.Conv2D(3, 3)
    x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    conv(x)
    prune(conv, rng)
    sparse = SparseConv2D.from_conv2d(conv)
    sparse(x)
    prune(conv, rng, sparsity=0.5)
    sparse.set_weights(conv.get_weights())
    assert rel_err(sparse(x).numpy(), conv(x).numpy()) <= 1e-5


def test_tune_layers_then_sparsify_uses_the_records(rng, tmp_path, monkeypatch):
    from tvm_sparseconv.keras import layer_problems, tune_layers

    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(tmp_path / "logs"))
    inp = keras.Input((12, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="pruned")(inp)
    x = keras.layers.Conv2D(4, 3, name="dense")(x)
    model = keras.Model(inp, x)
    prune(model.get_layer("pruned"), rng)
    prune(model.get_layer("dense"), rng, sparsity=0.0)
    assert [p.name for p in layer_problems(model)] == ["pruned"]
    results = tune_layers(model, trials=4, work_dir=tmp_path / "work", verbose=False)
    assert len(results) == 1 and results[0].relative_error <= 1e-5
    assert tune_layers(model, trials=4, work_dir=tmp_path / "work", verbose=False) == []  # already tuned
    _, report = sparsify(model, measure=False, verbose=False)
    assert report.sparse_layers == ["pruned"]
    new, report = sparsify(model, repeats=3, min_speedup=0.0, verbose=False)
    assert {d.name: d.tuned for d in report.layers}["pruned"] is True


def test_tune_layers_per_shape_and_only_where_compile_finds_no_record(rng, tmp_path, monkeypatch):
    """`per_shape`: one layer of each shape is tuned (its record serves the others, nearest ELL
    width); `untuned_only`: a layer that `compile()` already finds a record for is skipped, though
    its own pattern was never tuned."""
    from tvm_sparseconv.keras import tune_layers

    monkeypatch.setenv("TVM_SPARSECONV_TUNING_LOGS", str(tmp_path / "logs"))

    from tvm_sparseconv.keras import layer_problems

    def model_of(seed, sparsity):
        inp = keras.Input((12, 10, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", name="a")(inp)
        x = keras.layers.Conv2D(8, 3, padding="same", name="b")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", name="c")(x)
        m = keras.Model(inp, x)
        layer_rng = np.random.default_rng(seed)
        for layer in m.layers[1:]:
            prune(layer, layer_rng, sparsity=sparsity)
        return m

    first = model_of(1, 0.9)
    b, c = (p.workload() for p in layer_problems(first)[1:])
    assert b != c and b.kernel_shape == c.kernel_shape, "two patterns of one shape"
    tuned = tune_layers(first, trials=4, work_dir=tmp_path / "work", verbose=False, per_shape=True)
    assert [r.problem for r in tuned] == ["a", "b"], "c has b's shape"
    other = model_of(2, 0.7)  # other patterns and ELL widths: no record of their own
    assert not {p.workload() for p in layer_problems(other)} & {r.workload for r in tuned}
    assert tune_layers(other, trials=4, work_dir=tmp_path / "work", verbose=False, untuned_only=True) == []


# --- BatchNormalization (and ReLU) folded into sparse layers -----------------------------------------
def _conv_bn_model(rng):
    """conv a -> BN -> ReLU -> conv b -> BN -> add(skip: conv c, linear, read twice) -> ReLU; the BNs
    with random statistics. c's output is used twice (no chain); b's BN feeds an Add (no ReLU)."""
    inp = keras.Input((12, 10, 8))
    a = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="a")(inp)
    a = keras.layers.BatchNormalization(name="a_bn")(a)
    a = keras.layers.Activation("relu", name="a_relu")(a)
    b = keras.layers.Conv2D(16, 3, padding="same", name="b")(a)
    b = keras.layers.BatchNormalization(name="b_bn")(b)
    c = keras.layers.Conv2D(16, 1, name="c")(a)
    cc = keras.layers.Multiply(name="c_sq")([c, c])
    out = keras.layers.ReLU(name="out_relu")(keras.layers.Add(name="add")([b, c, cc]))
    model = keras.Model(inp, out)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            prune(layer, rng)
        elif isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, n), rng.standard_normal(n), rng.standard_normal(n) * 0.3,
                               rng.uniform(0.2, 3.0, n)])
    return model


def test_batchnorm_chains_are_found_only_where_folding_keeps_the_model():
    from tvm_sparseconv.keras.batchnorm import chains

    model = _conv_bn_model(np.random.default_rng(0))
    found = chains(model, keras)
    assert set(found) == {"a", "b"}, "c's output goes to two layers"
    assert found["a"].layer_names == ["a_bn", "a_relu"] and found["a"].activation == "relu"
    assert found["b"].layer_names == ["b_bn"] and found["b"].activation is None, "b's BN feeds an Add"


@pytest.mark.parametrize("measure", [False, True])
def test_sparsify_folds_batchnorm_and_relu_into_sparse_layers(measure, tmp_path):
    """The sparse layers take in their BatchNormalization (and ReLU): the new model's predictions
    match the pruned model's at inference, the folded layers pass their input on, the report names
    them, the model saves and loads; with `fold_batchnorm=False` the layers stay."""
    rng = np.random.default_rng(3)
    model = _conv_bn_model(rng)
    x = rng.standard_normal((2, 12, 10, 8)).astype(np.float32)
    fast, report = sparsify(model, measure=measure, repeats=3, min_speedup=0.0, verbose=False)
    assert report.sparse_layers == ["a", "b", "c"]
    assert {d.name: d.folded for d in report.layers} == {"a": ["a_bn", "a_relu"], "b": ["b_bn"], "c": []}
    kinds = {layer.name: type(layer).__name__ for layer in fast.layers}
    assert kinds["a_bn"] == kinds["a_relu"] == kinds["b_bn"] == "FoldedIntoSparse"
    assert kinds["a"] == "SparseConv2D" and fast.get_layer("a").activation == "relu"
    assert rel_err(fast(x, training=False).numpy(), model(x, training=False).numpy()) <= 1e-5
    if not measure:
        path = tmp_path / "folded.keras"
        fast.save(path)
        loaded = keras.models.load_model(path)
        assert rel_err(loaded(x, training=False).numpy(), model(x, training=False).numpy()) <= 1e-5
    kept, _ = sparsify(model, measure=False, verbose=False, fold_batchnorm=False)
    assert type(kept.get_layer("a_bn")).__name__ == "BatchNormalization"
    assert rel_err(kept(x, training=False).numpy(), model(x, training=False).numpy()) <= 1e-5


# --- what cannot be converted, and bad input ------------------------------------------------------
def test_unconvertible_layers_stay_dense_with_a_reason(rng):
    inp = keras.Input((12, 12, 4))
    x = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(inp)
    x = keras.layers.Conv2D(4, 3, activation=lambda t: t * 2.0, name="lambda_act")(x)
    x = keras.layers.Conv2D(4, 3, name="plain")(x)
    model = keras.Model(inp, x)
    for layer in model.layers[1:]:
        prune(layer, rng)
    with pytest.warns(UserWarning, match="shares"):
        new, report = sparsify(model, measure=False, verbose=False)
    reasons = {d.name: d.reason for d in report.layers}
    assert "groups=2" in reasons["grouped"] and "activation" in reasons["lambda_act"]
    assert report.sparse_layers == ["plain"]
    x = rng.standard_normal((2, 12, 12, 4)).astype(np.float32)
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5


def test_channels_first_and_float64_layers_stay_dense(rng):
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, name="f64", dtype="float64")(inp)
    model = keras.Model(inp, x)
    cf = keras.layers.Conv2D(4, 3, data_format="channels_first")
    cf.build((None, 3, 10, 10))
    from tvm_sparseconv.keras import unsupported_reason

    assert "channels_first" in unsupported_reason(cf)
    _, report = sparsify(model, measure=False, verbose=False)
    assert report.layers[0].chosen == "dense" and "float32" in report.layers[0].reason
    with pytest.raises(ValueError, match="float32"):
        SparseConv2D(4, 3, dtype="float16")


def test_model_without_conv2d_is_copied_with_a_warning(rng):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="no Conv2D"):
        new, report = sparsify(model, verbose=False)
    assert report.layers == [] and new is not model
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(new.predict(x, verbose=0), model.predict(x, verbose=0))


def test_bad_arguments_are_refused(rng):
    with pytest.raises(TypeError, match="Keras model"):
        sparsify("not a model")
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(small_cnn(rng), min_sparsity=1.5)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    sub = Sub()
    sub(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="subclassed"):
        sparsify(sub)
    with pytest.raises(ValueError, match="padding"):
        SparseConv2D(4, 3, padding="full")
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'tf32'\), got 'bf16'"):
        SparseConv2D(4, 3, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        sparsify(small_cnn(rng), precision="fp16")


def test_precision_tf32_reaches_every_sparse_layer_and_survives_save_load(rng, tmp_path):
    """`sparsify(precision="tf32")`: each SparseConv2D compiles with TF32 algorithms allowed (none
    runs on a CPU, so the outputs stay fp32-exact here), and the setting is in the saved model."""
    model = small_cnn(rng)
    new, report = sparsify(model, measure=False, verbose=False, precision="tf32")
    sparse = [lay for lay in new.layers if isinstance(lay, SparseConv2D)]
    assert len(sparse) == 4 and {lay.precision for lay in sparse} == {"tf32"}
    assert "(TF32 allowed)" in str(report)
    x = rng.standard_normal((2, 20, 18, 3)).astype(np.float32)
    assert rel_err(new(x).numpy(), model(x).numpy()) <= 1e-5
    new.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert {lay.precision for lay in loaded.layers if isinstance(lay, SparseConv2D)} == {"tf32"}
    assert SparseConv2D(4, 3).get_config()["precision"] == "fp32"


def test_dense_and_sparse_outputs_match_within_tf32_where_either_may_round_to_it():
    """On a GPU, TensorFlow's own convolution rounds to TF32 by default (about 3e-4 from the exact
    result): an fp32 sparse layer must not be judged "different" from it there."""
    from tvm_sparseconv.keras.sparsify import MATCH_TOLERANCE, match_tolerance

    assert match_tolerance("cpu", "fp32") == match_tolerance(None, "fp32") == MATCH_TOLERANCE
    assert match_tolerance("cpu", "tf32") == 2e-3
    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        tf.config.experimental.enable_tensor_float_32_execution(True)
        assert match_tolerance("cuda", "fp32") == 2e-3
        tf.config.experimental.enable_tensor_float_32_execution(False)
        assert match_tolerance("cuda", "fp32") == MATCH_TOLERANCE
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(enabled)


def test_layer_refuses_wrong_input(rng):
    conv = keras.layers.Conv2D(3, 3)
    conv(np.zeros((1, 6, 6, 2), np.float32))
    sparse = SparseConv2D.from_conv2d(conv)
    x = rng.standard_normal((1, 6, 6, 2))
    assert rel_err(sparse(x).numpy(), conv(x).numpy()) <= 1e-5  # Keras casts float64 input, as for Conv2D
    with pytest.raises(TypeError, match="float32"):
        sparse.call(tf.constant(x))  # below Keras' casting, the layer itself checks
    with pytest.raises(ValueError, match="channels"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sparse(np.zeros((1, 6, 6, 5), np.float32))
