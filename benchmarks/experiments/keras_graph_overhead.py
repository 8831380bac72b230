#!/usr/bin/env python
"""Keras experiment (issues 5, 14): what a SparseConv2D costs inside tf.function beyond its kernel. Not library code.

  python benchmarks/experiments/keras_graph_overhead.py \
      --out benchmarks/experiments/keras_graph_overhead-cpu-znver3.json

Three pruned layers (90% zeros), untuned: 5x5x32x64 and 5x5x32x32 on a 1x32x32x32 input (the
kernel dominates) and 3x3x8x8 on 1x8x8x8 (the overhead dominates). Each setting runs in its own process: default
threads; TensorFlow's inter-op pool limited to 1 thread; TVM's pool limited to 1 thread
(TVM_NUM_THREADS=1). Medians (microseconds) of: the kernel alone on TVM tensors; the compiled op
called eagerly on a tf.Tensor (DLPack); the TvmSparseConv2D op called eagerly; the Keras layer
called eagerly; the layer inside tf.function through the TvmSparseConv2D op and, forced, through
the tf.py_function fallback; an identity tf.py_function. The three in-graph numbers are less the
cost of calling an identity tf.function. `*_overhead_us`: the median over rounds of (layer in
tf.function - identity tf.function - kernel), the three timed back to back in each round. For the layers
with as many outputs as inputs also 20 copies chained in one tf.function (`chain_*_overhead_us`:
per layer, against 20 kernel calls from Python), which spreads the call's cost and its noise over 20 layers (a
tf.function call hands the work to one of TensorFlow's threads, which an identity function does
not pay, so the single-layer numbers overstate the per-layer cost). Issue 14's target: in-graph overhead of the
op <= 20 us.
Issue 5's run (py_function only, the larger layer) is `keras_graph_overhead-cpu-znver4.json`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
import numpy as np, tensorflow as tf, keras
if sys.argv[1] == "tf_interop_1":
    tf.config.threading.set_inter_op_parallelism_threads(1)
warnings.simplefilter("ignore")
import tvm, tvm_sparseconv
from tvm_sparseconv import tf_op
from tvm_sparseconv.keras import SparseConv2D
assert tf_op.available(), tf_op.unavailable_reason()
rng = np.random.default_rng(0)
REPEATS = int(sys.argv[2])
CHAIN = 20


def med(f, n=REPEATS):
    for _ in range(10):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e6)


def paired(graph_fn, kernel_fn, n=REPEATS):
    # Median over n rounds of graph_fn - identity call - kernel_fn, the three timed back to back in
    # each round (so that the machine's drift, large on a shared 2-core VM, cancels).
    for _ in range(10):
        graph_fn(); identity(x_now[0]); kernel_fn()
    diffs = []
    for _ in range(n):
        t0 = time.perf_counter(); graph_fn(); t1 = time.perf_counter(); identity(x_now[0])
        t2 = time.perf_counter(); kernel_fn(); t3 = time.perf_counter()
        diffs.append((t1 - t0) - (t2 - t1) - (t3 - t2))
    return float(np.median(diffs) * 1e6)


x_now = [None]


def layer_for(name, shape, filters, k):
    conv = keras.layers.Conv2D(filters, k, padding="same", name=name)
    x = tf.constant(rng.random(shape, dtype=np.float32))
    conv(x)
    w = conv.get_weights()
    w[0][rng.random(w[0].shape) < 0.9] = 0
    conv.set_weights(w)
    return SparseConv2D.from_conv2d(conv), x


identity = tf.function(lambda u: tf.identity(u))
py_identity = tf.function(lambda v: tf.py_function(lambda a: a, [v], Tout=tf.float32))
results = {}
for name, shape, filters, k in (("5x5x32x64 at 1x32x32", (1, 32, 32, 32), 64, 5),
                                ("5x5x32x32 at 1x32x32", (1, 32, 32, 32), 32, 5),
                                ("3x3x8x8 at 1x8x8", (1, 8, 8, 8), 8, 3)):
    layer, x = layer_for(name.split()[0].replace("x", "_"), shape, filters, k)
    op = layer.compiled(x.shape)
    xt = tvm.runtime.tensor(x.numpy())
    yt = tvm.runtime.empty(op.output_shape, "float32", tvm.cpu())
    weights = [tf.constant(w) for w in tf_op._artifacts(op)[1]]
    data = tf_op.module_bytes(op)
    lib = tf_op.load()
    eager_op = lambda: lib.tvm_sparse_conv2d(x, weights, module=data, function="sparse_conv2d",
                                             input_shape=list(op.input_shape), output_shape=list(op.output_shape))
    in_graph = tf.function(lambda t: layer(t))
    in_graph(x)  # traced with the op
    real = tf_op.unavailable_reason
    tf_op.unavailable_reason = lambda: "benchmark: forced tf.py_function"
    py_graph = tf.function(lambda t: layer(t))
    py_graph(x)  # traced with the fallback
    tf_op.unavailable_reason = real
    ops = {o.type for o in py_graph.get_concrete_function(x).graph.get_operations()}
    assert "EagerPyFunc" in ops, ops
    base = med(lambda: identity(x))
    r = {"kernel_us": med(lambda: op.run(xt, yt)), "eager_dlpack_us": med(lambda: op(x)),
         "eager_op_us": med(eager_op), "eager_layer_us": med(lambda: layer(x)),
         "in_graph_op_us": med(lambda: in_graph(x)) - base,
         "in_graph_py_function_us": med(lambda: py_graph(x)) - base,
         "py_function_identity_us": med(lambda: py_identity(x)) - base,
         "tf_function_call_us": base}
    x_now[0] = x
    kernel = lambda: op.run(xt, yt)
    r["in_graph_op_overhead_us"] = paired(lambda: in_graph(x), kernel)
    r["in_graph_py_function_overhead_us"] = paired(lambda: py_graph(x), kernel)
    if shape[-1] == filters:  # chainable: CHAIN layers in one graph, per layer (the call's cost spread out)
        def chain(t):
            for _ in range(CHAIN):
                t = layer(t)
            return t

        chained = tf.function(chain)
        chained(x)
        tf_op.unavailable_reason = lambda: "benchmark: forced tf.py_function"
        py_chained = tf.function(chain)
        py_chained(x)
        tf_op.unavailable_reason = real
        def kernels():
            for _ in range(CHAIN):
                op.run(xt, yt)

        r["chain"] = CHAIN
        r["chain_op_overhead_us"] = paired(lambda: chained(x), kernels) / CHAIN
        r["chain_py_function_overhead_us"] = paired(lambda: py_chained(x), kernels) / CHAIN
    results[name] = r
print(json.dumps(results))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=300, help="timed calls per measurement (default 300)")
    args = ap.parse_args()
    out = args.out
    root = Path(__file__).resolve().parents[2]
    import platform

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "machine": platform.machine(),
               "repeats": args.repeats, "settings": {}}
    for name in ("default", "tf_interop_1", "tvm_threads_1"):
        env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
        if name == "tvm_threads_1":
            env["TVM_NUM_THREADS"] = "1"
        proc = subprocess.run([sys.executable, "-c", CHILD, name, str(args.repeats)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: child failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results["settings"][name] = res
        for layer, r in res.items():
            print(
                f"{name:<14} {layer:<22} kernel {r['kernel_us']:.0f} us | eager: DLPack {r['eager_dlpack_us']:.0f}, "
                f"op {r['eager_op_us']:.0f}, layer {r['eager_layer_us']:.0f} | in graph: op {r['in_graph_op_us']:.0f} "
                f"(overhead {r['in_graph_op_overhead_us']:.0f}), py_function {r['in_graph_py_function_us']:.0f} "
                f"(overhead {r['in_graph_py_function_overhead_us']:.0f}) | tf.function call "
                f"{r['tf_function_call_us']:.0f} us, subtracted"
                + (f" | chain of {r['chain']}: per-layer overhead op {r['chain_op_overhead_us']:.1f}, "
                   f"py_function {r['chain_py_function_overhead_us']:.1f}" if "chain" in r else "")
            )
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
