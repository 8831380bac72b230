"""The TensorFlow op (issue 14): sparsified Keras models in graphs without Python, exported as
SavedModels and served in a fresh process; and the refusal to export where only py_function works.

The op library must build here (CI builds it from a clean checkout: `make test` runs `make setup`);
a machine that cannot build it fails `test_op_library_is_built_and_loaded` with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tvm_sparseconv as tsc  # noqa: E402
from tvm_sparseconv import tf_op  # noqa: E402
from tvm_sparseconv.keras import NotExportableError, SparseConv2D, sparsify  # noqa: E402

from conftest import prune_layer as prune, random_input, random_pruned_kernel, reference_conv, rel_err  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY_FUNC_OPS = {"EagerPyFunc", "PyFunc", "PyFuncStateless"}


def op_types(fn) -> set[str]:
    """Every op type in a concrete function's graph, its nested functions included."""
    graph_def = fn.graph.as_graph_def()
    types = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        types |= {n.op for n in f.node_def}
    return types


def functional_model(rng):
    """relu, relu6 with bias and stride 2, a linear layer without bias, and one left dense."""
    inp = keras.Input((18, 17, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c_relu")(inp)
    x = keras.layers.Conv2D(12, (5, 3), strides=2, padding="valid", activation="relu6", name="c_relu6_s2")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c_linear")(x)
    x = keras.layers.Conv2D(5, 1, activation="tanh", name="c_dense")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(x))
    for name in ("c_relu", "c_relu6_s2", "c_linear"):
        prune(model.get_layer(name), rng)
    prune(model.get_layer("c_dense"), rng, sparsity=0.2)  # not sparse enough: stays Conv2D
    return model


def sequential_model(rng):
    model = keras.Sequential([
        keras.Input((16, 16, 2)),
        keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu6", name="a"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b"),
        keras.layers.Conv2D(4, 3, name="dense_kept"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])
    for name in ("a", "b"):
        prune(model.get_layer(name), rng)
    prune(model.get_layer("dense_kept"), rng, sparsity=0.1)
    return model


def sparsified(model):
    new, report = sparsify(model, min_sparsity=0.5, measure=False, verbose=False)
    dense = [d.name for d in report.layers if d.chosen == "dense"]
    assert len(dense) == 1 and report.sparse_layers, report  # one layer left dense, the rest sparse
    return new


SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tvm_sparseconv  # loads the op library: all a fresh process needs
    loaded = tf.saved_model.load(sys.argv[1])
    fn = loaded.signatures["serving_default"] if sys.argv[3] == "signature" else loaded.serve
    inputs = np.load(sys.argv[2])
    outs = {}
    for key in inputs.files:
        y = fn(tf.constant(inputs[key]))
        outs[key] = (list(y.values())[0] if isinstance(y, dict) else y).numpy()
    np.savez(sys.argv[2] + ".out.npz", **outs)
    graph = (loaded.signatures["serving_default"] if sys.argv[3] == "signature"
             else loaded.serve.get_concrete_function(tf.TensorSpec([None, *inputs[inputs.files[0]].shape[1:]])))
    gd = graph.graph.as_graph_def()
    ops = {n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def}
    print(json.dumps(sorted(ops)))
""")


def serve_in_fresh_process(export_dir: Path, inputs: dict[str, np.ndarray], how: str = "serve"):
    """Load `export_dir` in a new Python process (which never saw the model) and call it."""
    path = export_dir.parent / f"{export_dir.name}-inputs.npz"
    np.savez(path, **inputs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SERVE, str(export_dir), str(path), how],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    outs = np.load(str(path) + ".out.npz")
    return {k: outs[k] for k in outs.files}, set(json.loads(proc.stdout.strip().splitlines()[-1]))


# --- the op itself ------------------------------------------------------------------------------
def test_op_library_is_built_and_loaded():
    assert tf_op.unavailable_reason() is None
    assert tf_op.available()
    assert tf_op.library_path().exists()


def test_import_registers_the_op_before_or_after_tensorflow():
    """`import tvm_sparseconv` alone does not import TensorFlow; it registers the op when it is."""
    code = textwrap.dedent("""
        import sys
        import tvm_sparseconv
        assert "tensorflow" not in sys.modules, "importing tvm_sparseconv imported TensorFlow"
        import tensorflow
        from tensorflow.python.framework import op_def_registry
        assert op_def_registry.get("TvmSparseConv2D") is not None, "op not registered after import tensorflow"
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_setup_command_loads_the_op_in_a_fresh_process():
    """`python -m tvm_sparseconv.tf_op` (what `make setup` runs): there `load()` itself imports
    TensorFlow, whose import hook loads the op too; it once deadlocked on its own lock."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tvm_sparseconv.tf_op"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "TensorFlow op:" in proc.stdout, proc.stderr[-3000:]

def test_missing_compiler_says_what_to_install(monkeypatch, tmp_path):
    from tvm_sparseconv.tf_op import builder as op_build

    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(tf_op.OpLibraryError, match=r"no C\+\+ compiler found.*apt-get install g\+\+"):
        op_build.find_compiler()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    with pytest.raises(tf_op.OpLibraryError, match="c\\+\\+, g\\+\\+, clang\\+\\+"):
        op_build.find_compiler()


def test_gpu_kernel_compiles_against_these_headers():
    """The GPU kernel is built only against a CUDA TensorFlow, which no project machine has; this at
    least keeps its source compiling (syntax and types, with TensorFlow's stream headers)."""
    from tvm_sparseconv.tf_op import builder as op_build

    cmd = [op_build.find_compiler(), "-fsyntax-only", *op_build.compile_flags(), "-DTSC_TF_OP_GPU",
           '-DTSC_TVM_RUNTIME_CUDA="libtvm_runtime_cuda.so"', str(op_build.SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("case", [
    dict(shape=(1, 13, 11, 5), k=(3, 3, 5, 7), strides=1, padding="SAME", activation="relu", bias=True, batch=4),
    dict(shape=(2, 9, 12, 3), k=(5, 3, 3, 6), strides=2, padding="VALID", activation="relu6", bias=True, batch=6),
    dict(shape=(1, 7, 7, 4), k=(1, 1, 4, 9), strides=1, padding="SAME", activation=None, bias=False, batch=3),
    dict(shape=(1, 15, 13, 8), k=(1, 1, 8, 12), strides=(2, 3), padding="SAME", activation="relu", bias=True,
         batch=2),
    dict(shape=(1, 14, 15, 8), k=(3, 3, 8, 6), strides=(2, 3), padding="SAME", activation=None, bias=True,
         batch=2),
], ids=["relu-batch-loop", "relu6-strided-batch2", "1x1-unaligned-slices", "1x1-strided-subsampled",
        "3x3-strided-phases-padded"])
def test_op_matches_float64_reference_for_any_multiple_of_the_compiled_batch(case, rng):
    """The op runs the batch-B module once per B images; slices that are not 64-byte aligned (the
    1x1 case: 7*7*4 floats per image) go through an aligned scratch buffer."""
    w = random_pruned_kernel(rng, case["k"], 0.2)
    bias = rng.standard_normal(case["k"][3]).astype(np.float32) if case["bias"] else None
    compiled = tsc.compile(tsc.SparseKernel.from_dense(w), case["shape"], case["strides"], case["padding"],
                           bias=bias, activation=case["activation"], target="cpu")
    x = random_input(rng, (case["batch"], *case["shape"][1:]))
    ref = reference_conv(x, w, case["strides"], case["padding"], bias=bias, activation=case["activation"])
    eager = tf_op.sparse_conv2d(tf.constant(x), compiled)
    assert rel_err(eager.numpy(), ref) <= 1e-5
    graph = tf.function(lambda t: tf_op.sparse_conv2d(t, compiled))
    assert rel_err(graph(tf.constant(x)).numpy(), ref) <= 1e-5
    # an input that starts off a 64-byte boundary (a slice of a larger tensor) is still right
    offset = tf.constant(random_input(rng, (case["batch"] + 1, *case["shape"][1:])))[1:]
    ref2 = reference_conv(offset.numpy(), w, case["strides"], case["padding"], bias=bias,
                          activation=case["activation"])
    assert rel_err(graph(offset).numpy(), ref2) <= 1e-5


def test_op_refuses_a_batch_that_is_not_a_multiple_and_a_wrong_image_size(rng):
    w = random_pruned_kernel(rng, (3, 3, 2, 4), 0.3)
    compiled = tsc.compile(tsc.SparseKernel.from_dense(w), (2, 6, 6, 2), target="cpu")
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of the compiled batch 2"):
        tf_op.sparse_conv2d(tf.constant(random_input(rng, (3, 6, 6, 2))), compiled)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match the compiled shape"):
        tf_op.sparse_conv2d(tf.constant(random_input(rng, (2, 7, 6, 2))), compiled)
    assert tf_op.sparse_conv2d(tf.constant(random_input(rng, (0, 6, 6, 2))), compiled).shape == (0, 6, 6, 4)


# --- graphs without Python ----------------------------------------------------------------------
def test_predict_and_tf_function_run_the_op_not_py_function(rng, monkeypatch):
    model = functional_model(rng)
    new = sparsified(model)
    x = random_input(rng, (3, 18, 17, 3))
    ref = model.predict(x, verbose=0)

    def no_py_function(*args, **kwargs):
        raise AssertionError("tf.py_function used although the op library is loaded")

    monkeypatch.setattr(tf, "py_function", no_py_function)
    assert rel_err(new.predict(x, verbose=0), ref) <= 1e-5
    predict_graphs = new.predict_function._list_all_concrete_functions()
    assert predict_graphs
    for fn in predict_graphs:
        ops = op_types(fn)
        assert "TvmSparseConv2D" in ops and not ops & PY_FUNC_OPS, ops

    graph_fn = tf.function(lambda t: new(t))
    for spec in (tf.TensorSpec((None, 18, 17, 3)), tf.TensorSpec((3, 18, 17, 3))):
        ops = op_types(graph_fn.get_concrete_function(spec))
        assert "TvmSparseConv2D" in ops and not ops & PY_FUNC_OPS, ops
        count = sum(n.op == "TvmSparseConv2D" for n in graph_fn.get_concrete_function(spec).graph.as_graph_def().node)
        assert count == 3  # the three sparse layers; the fourth stayed Conv2D
    assert rel_err(graph_fn(tf.constant(x)).numpy(), ref) <= 1e-5


# --- export and serve in a fresh process ----------------------------------------------------------
@pytest.mark.parametrize("builder", [functional_model, sequential_model], ids=["functional", "sequential"])
def test_exported_model_serves_in_a_fresh_process(builder, rng, tmp_path):
    model = builder(rng)
    new = sparsified(model)
    shape = model.inputs[0].shape[1:]
    inputs = {f"batch{n}": random_input(rng, (n, *shape)) for n in (1, 3)}
    export_dir = tmp_path / "exported"
    new.export(str(export_dir), verbose=False)
    del new  # the serving process never sees the model object anyway
    outs, ops = serve_in_fresh_process(export_dir, inputs)
    assert "TvmSparseConv2D" in ops and not ops & PY_FUNC_OPS, ops
    for key, x in inputs.items():
        assert rel_err(outs[key], model.predict(x, verbose=0)) <= 1e-5, key


def test_tf_saved_model_save_serves_in_a_fresh_process(rng, tmp_path):
    model = functional_model(rng)
    new = sparsified(model)
    fn = tf.function(lambda t: new(t), input_signature=[tf.TensorSpec((None, 18, 17, 3), tf.float32)])
    export_dir = tmp_path / "saved"
    tf.saved_model.save(new, str(export_dir), signatures=fn)
    x = random_input(rng, (2, 18, 17, 3))
    outs, ops = serve_in_fresh_process(export_dir, {"x": x}, how="signature")
    assert "TvmSparseConv2D" in ops and not ops & PY_FUNC_OPS, ops
    assert rel_err(outs["x"], model.predict(x, verbose=0)) <= 1e-5


# --- the fallback, and the refusal to export it ---------------------------------------------------
def test_without_the_op_library_graphs_use_py_function_and_export_is_refused(rng, tmp_path, monkeypatch):
    monkeypatch.setattr(tf_op, "unavailable_reason", lambda: "no C++ compiler (simulated)")
    model = sequential_model(rng)
    new = sparsified(model)
    x = random_input(rng, (2, 16, 16, 2))
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5  # the fallback works
    ops = op_types(tf.function(lambda t: new(t)).get_concrete_function(tf.TensorSpec((None, 16, 16, 2))))
    assert ops & PY_FUNC_OPS and "TvmSparseConv2D" not in ops, ops
    for save in (lambda d: new.export(d, verbose=False), lambda d: tf.saved_model.save(new, d)):
        target = tmp_path / f"refused{len(list(tmp_path.iterdir()))}"
        with pytest.raises(NotExportableError, match=r"'a'.*py_function.*no C\+\+ compiler \(simulated\)"):
            save(str(target))
        assert not (target / "saved_model.pb").exists()
    new.save(tmp_path / "still.keras")  # the Keras format holds the layer's config, not a graph: fine


def test_unknown_image_size_falls_back_and_refuses_export(rng, tmp_path):
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="fcn")(inp)
    model = keras.Model(inp, out)
    prune(model.get_layer("fcn"), rng)
    new, _ = sparsify(model, measure=False, verbose=False)
    x = random_input(rng, (1, 10, 9, 3))
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) <= 1e-5
    with pytest.raises(NotExportableError, match="height and width are unknown"):
        new.export(str(tmp_path / "fcn"), verbose=False)
    assert not (tmp_path / "fcn" / "saved_model.pb").exists()


def test_layer_in_graph_keeps_weights_of_its_trace_and_retraces_after_set_weights(rng):
    """Documented behaviour: a traced graph holds the weights it was traced with."""
    conv = keras.layers.Conv2D(3, 3, padding="same")
    x = random_input(rng, (1, 8, 8, 2))
    conv(x)
    prune(conv, rng)
    layer = SparseConv2D.from_conv2d(conv)
    assert rel_err(tf.function(lambda t: layer(t))(tf.constant(x)).numpy(), conv(x).numpy()) <= 1e-5
    prune(conv, rng, sparsity=0.5)
    layer.set_weights(conv.get_weights())
    assert rel_err(tf.function(lambda t: layer(t))(tf.constant(x)).numpy(), conv(x).numpy()) <= 1e-5
