#!/usr/bin/env python
"""Keras experiment (issue 5): what a SparseConv2D costs inside tf.function beyond its kernel. Not library code.

  python benchmarks/experiments/keras_graph_overhead.py \
      --out benchmarks/experiments/keras_graph_overhead-cpu-znver4.json

One pruned 5x5x32x64 layer on a 1x32x32x32 input, untuned. Each setting runs in its own process:
default threads; TensorFlow's inter-op pool limited to 1 thread; TVM's pool limited to 1 thread
(TVM_NUM_THREADS=1). Printed: the kernel alone on TVM tensors, the op called eagerly on a
tf.Tensor, the layer inside tf.function and an identity `tf.py_function`, each of these two less
the cost of an identity tf.function.
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
from tvm_sparseconv.keras import SparseConv2D
rng = np.random.default_rng(0)
conv = keras.layers.Conv2D(64, 5, padding="same")
x = tf.constant(rng.random((1, 32, 32, 32), dtype=np.float32))
conv(x)
w = conv.get_weights()
w[0][rng.random(w[0].shape) < 0.9] = 0
conv.set_weights(w)
layer = SparseConv2D.from_conv2d(conv)
op = layer.compiled(x.shape)
def med(f, n=100):
    for _ in range(10):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e6)
import tvm
xt = tvm.runtime.tensor(x.numpy())
yt = tvm.runtime.empty(op.output_shape, "float32", tvm.cpu())
in_graph = tf.function(lambda t: layer(t))
identity = tf.function(lambda u: tf.identity(u))
py_identity = tf.function(lambda v: tf.py_function(lambda a: a, [v], Tout=tf.float32))
base = med(lambda: identity(x))
print(json.dumps({"kernel_us": med(lambda: op.run(xt, yt)), "eager_op_us": med(lambda: op(x)),
                  "in_graph_us": med(lambda: in_graph(x)) - base,
                  "py_function_identity_us": med(lambda: py_identity(x)) - base,
                  "tf_function_call_us": base}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    root = Path(__file__).resolve().parents[2]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": {}}
    for name in ("default", "tf_interop_1", "tvm_threads_1"):
        env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
        if name == "tvm_threads_1":
            env["TVM_NUM_THREADS"] = "1"
        proc = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True, env=env)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results["settings"][name] = res
        print(
            f"{name:<14} kernel {res['kernel_us']:.0f} us, eager op {res['eager_op_us']:.0f} us, "
            f"in graph {res['in_graph_us']:.0f} us, py_function alone {res['py_function_identity_us']:.0f} us "
            f"(tf.function call {res['tf_function_call_us']:.0f} us, subtracted)"
        )
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
