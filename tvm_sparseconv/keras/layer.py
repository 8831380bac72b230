"""`SparseConv2D`: a Keras inference layer that runs a pruned Conv2D with tvm_sparseconv.

The layer keeps the Conv2D's weights (`kernel` HWIO and `bias`, non-trainable) so that weights move
between the two layers unchanged and `model.save`/`load_model` need nothing special. The sparse
form is built from the kernel once, on the first call (again after `set_weights` or a weights
load), and one compiled op is kept per input shape and device: a new batch or image size compiles
again, cached. In eager mode the layer calls the op on the tensor directly (DLPack, zero copy).
Inside `tf.function` / `model.predict` / an export it becomes one `TvmSparseConv2D` node
(`tvm_sparseconv.tf_op`), which holds the compiled module and the packed weights, so the graph runs
without Python and a SavedModel serves in any process that has imported tvm_sparseconv. Traced
with an unknown batch, the node holds a batch-1 module and runs it once per image; with a known
batch, a module for that batch. The image size must be known when the graph is traced.

Fallback: where the op library cannot be built (`tf_op.unavailable_reason()`), or for an input
whose height or width is unknown at tracing, the layer runs through `tf.py_function` in graphs
(as before the op existed). Such a graph only works in this Python process, so saving the model as
a SavedModel (`model.export`, `tf.saved_model.save`) raises `NotExportableError` instead of writing
an artifact that cannot be served. The weights are constants of a traced graph: after
`set_weights`, trace again (e.g. `model.make_predict_function(force=True)`).
Inference only: it has no gradient.
"""

from __future__ import annotations

import functools
import threading
from types import ModuleType
from typing import Any

import numpy as np

from ..algorithms import check_precision
from ..kernel import SparseKernel
from ..workload import _pair, output_size
from ..workloads import Problem


class NotExportableError(RuntimeError):
    """A model whose SparseConv2D runs through tf.py_function cannot be saved as a SavedModel."""


#: Activations the compiled kernel applies itself; any other named Keras activation runs after it.
FUSED_ACTIVATIONS = ("relu", "relu6")


def activation_name(activation: Any, keras: ModuleType) -> str | None:
    """A Keras activation as the name it serialises to (None for linear); ValueError if it has none."""
    if activation is None:
        return None
    if isinstance(activation, str):
        name = activation
    else:
        name = keras.activations.serialize(activation)
        if isinstance(name, dict):  # Keras 3 may wrap a function as a config dict
            name = name.get("config", name.get("class_name"))
    if not isinstance(name, str):
        raise ValueError(f"activation {activation!r} is not a named Keras activation")
    name = {"linear": None}.get(name, name)
    if name is not None and name not in FUSED_ACTIVATIONS:
        keras.activations.get(name)  # raises ValueError for an unknown name
    return name


def output_hw(h, w, kernel_size, strides, dilation_rate, padding: str):
    """Output height and width (None where the input's is unknown), TensorFlow's arithmetic."""
    return tuple(None if size is None else output_size(size, k, s, d, padding)
                 for size, k, s, d in zip((h, w), kernel_size, strides, dilation_rate))


@functools.lru_cache(maxsize=None)
def sparse_conv2d_class(keras: ModuleType) -> type:
    """The SparseConv2D layer class for one Keras package (registered for deserialisation)."""

    @keras.utils.register_keras_serializable(package="tvm_sparseconv")
    class SparseConv2D(keras.layers.Layer):
        """Conv2D with a pruned kernel, run by tvm_sparseconv (inference only, channels-last).

        Same arguments as `Conv2D` for what it supports: `strides`, `padding` ("same"/"valid"),
        `dilation_rate`, `use_bias`, `activation` (relu/relu6 fused into the kernel, any other
        named Keras activation applied after it). `target`: None (the input's device), "cpu" or "cuda".
        `precision`: "fp32" (the default: relative error about 1e-6) or "tf32", which also lets
        TF32 tensor-core algorithms run it where tuned (`tvm_sparseconv.compile`'s `precision`).
        Build one from a layer with `SparseConv2D.from_conv2d(conv)` or from a `SparseKernel` with
        `SparseConv2D.from_sparse_kernel(kernel, ...)`.
        """

        def __init__(self, filters: int, kernel_size, strides=(1, 1), padding: str = "valid",
                     dilation_rate=(1, 1), activation=None, use_bias: bool = True, target: str | None = None,
                     precision: str = "fp32", **kwargs):
            dtype = kwargs.get("dtype")
            dtype_name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
            if dtype_name not in (None, "float32"):
                raise ValueError(f"SparseConv2D computes in float32; got dtype {dtype_name!r}")
            kwargs.setdefault("trainable", False)
            super().__init__(**kwargs)
            self.filters = int(filters)
            if self.filters < 1:
                raise ValueError(f"filters must be >= 1, got {filters}")
            self.kernel_size = _pair(kernel_size, "kernel_size")
            self.strides = _pair(strides, "strides")
            self.dilation_rate = _pair(dilation_rate, "dilation_rate")
            self.padding = str(padding).lower()
            if self.padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
            if target not in (None, "cpu", "cuda"):
                raise ValueError(f"target must be None, 'cpu' or 'cuda', got {target!r}")
            self.target = target
            self.precision = check_precision(precision)
            self.activation = activation_name(activation, keras)
            self.use_bias = bool(use_bias)
            self._tsc_after = (None if self.activation in (None, *FUSED_ACTIVATIONS)
                           else keras.activations.get(self.activation))
            self._tsc_compiled = _CompiledOps()
            self._tsc_py_function_reason: str | None = None  # set when a graph used the fallback
            self._tsc_sparse: SparseKernel | None = None
            self._tsc_lock = threading.Lock()

        # --- construction from what users have -------------------------------------------------
        @classmethod
        def from_conv2d(cls, conv, target: str | None = None, batchnorm=None,
                        activation: str | None = None, precision: str = "fp32") -> "SparseConv2D":
            """A SparseConv2D with `conv`'s arguments, name and weights (conv must be built).
            `batchnorm`: a BatchNormalization after `conv` (which must be linear), folded into the
            kernel and a bias at inference (`batchnorm.folded_weights`); `activation` then: the
            activation after it ("relu", "relu6" or None)."""
            from .sparsify import unsupported_reason

            reason = unsupported_reason(conv)
            if reason:
                raise ValueError(f"cannot convert layer {conv.name!r}: {reason}")
            cfg = conv.get_config()
            if batchnorm is None:
                act, use_bias, weights = conv.activation, cfg["use_bias"], conv.get_weights()
            else:
                from .batchnorm import folded_weights

                if activation_name(conv.activation, keras) is not None:
                    raise ValueError(f"cannot fold {batchnorm.name!r} into {conv.name!r}: the convolution has "
                                     f"an activation before it")
                act, use_bias, weights = activation, True, list(folded_weights(conv, batchnorm))
            layer = cls(cfg["filters"], cfg["kernel_size"], cfg["strides"], cfg["padding"], cfg["dilation_rate"],
                        act, use_bias, target=target, precision=precision, name=conv.name)
            layer.build((None, None, None, conv.kernel.shape[2]))
            layer.set_weights(weights)
            return layer

        @classmethod
        def from_sparse_kernel(cls, kernel: SparseKernel, bias=None, strides=(1, 1), padding: str = "valid",
                               dilation_rate=(1, 1), activation=None, target: str | None = None,
                               precision: str = "fp32", **kwargs) -> "SparseConv2D":
            """A SparseConv2D for a `SparseKernel` (HWIO) and an optional bias of shape (Cout,)."""
            kh, kw, cin, cout = kernel.shape
            layer = cls(cout, (kh, kw), strides, padding, dilation_rate, activation, bias is not None,
                        target=target, precision=precision, **kwargs)
            layer.build((None, None, None, cin))
            weights = [kernel.to_dense()] + ([np.asarray(bias, np.float32)] if bias is not None else [])
            layer.set_weights(weights)
            layer._tsc_sparse = kernel
            return layer

        # --- Keras protocol ---------------------------------------------------------------------
        def build(self, input_shape):
            cin = input_shape[-1]
            if cin is None:
                raise ValueError("SparseConv2D needs the number of input channels (last input dimension)")
            self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, int(cin), self.filters),
                                          dtype="float32", initializer="zeros", trainable=False)
            self.bias = (self.add_weight(name="bias", shape=(self.filters,), dtype="float32",
                                         initializer="zeros", trainable=False) if self.use_bias else None)
            self.built = True

        def compute_output_shape(self, input_shape):
            n, h, w, _ = tuple(input_shape)
            return (n, *output_hw(h, w, self.kernel_size, self.strides, self.dilation_rate, self.padding),
                    self.filters)

        def call(self, inputs):
            import tensorflow as tf

            inputs = tf.convert_to_tensor(inputs)
            if inputs.dtype != tf.float32:
                raise TypeError(f"layer {self.name!r}: SparseConv2D takes float32 input, got {inputs.dtype.name}")
            if inputs.shape.rank != 4:
                raise ValueError(f"layer {self.name!r}: input must be NHWC (rank 4), got shape {inputs.shape}")
            if tf.executing_eagerly():
                return self._run(inputs)
            return self._graph_call(inputs)

        def _graph_call(self, inputs):
            """The layer in a graph: the TvmSparseConv2D op, else the tf.py_function fallback."""
            import tensorflow as tf

            from .. import tf_op
            from ..op import EmptySparseConv2D

            n, h, w, c = inputs.shape
            reason = tf_op.unavailable_reason()
            if reason is None and (h is None or w is None):
                reason = (f"the input's height and width are unknown when the graph is traced (input shape "
                          f"{tuple(inputs.shape)}); give the model's Input a fixed image size")
            if reason is not None:
                self._tsc_py_function_reason = reason
                out = tf.py_function(self._run, [inputs], Tout=tf.float32, name=f"{self.name}_tvm")
                out.set_shape(self.compute_output_shape(inputs.shape))
                return out
            # An unknown batch gets a batch-1 module, which the op runs once per image.
            shape = (1 if n is None else int(n), int(h), int(w), int(c))
            on_cuda = self.target == "cuda" or (self.target is None and _tf_gpu_for_tvm())
            with tf.init_scope():  # reads the weights' values: eagerly, outside the graph being traced
                op = self.compiled(shape, on_cuda)
            with tf.device("/GPU:0" if on_cuda else "/CPU:0"):
                if isinstance(op, EmptySparseConv2D):  # no elements to compute: tf.nn.conv2d's output
                    value = tf.constant(np.ascontiguousarray(op._value.reshape(-1, self.filters)[:1]))
                    y = tf.broadcast_to(tf.reshape(value, (1, 1, 1, self.filters)),
                                        tf.stack([tf.shape(inputs)[0], *op.output_shape[1:]]))
                else:
                    y = tf_op.sparse_conv2d(inputs, op, name=f"{self.name}_tvm")
            return y if self._tsc_after is None else self._tsc_after(y)

        def _trackable_children(self, save_type="checkpoint", **kwargs):
            # Every SavedModel writer (model.export, tf.saved_model.save, tf_keras' SavedModel
            # format) walks this; refusing here stops it before an unservable artifact is written.
            if save_type == "savedmodel":
                self.check_exportable()
            return super()._trackable_children(save_type, **kwargs)

        def check_exportable(self) -> None:
            """Raise `NotExportableError` if a graph of this layer needs Python (tf.py_function)."""
            from .. import tf_op

            reason = tf_op.unavailable_reason() or self._tsc_py_function_reason
            if reason:
                raise NotExportableError(
                    f"cannot save layer {self.name!r} (SparseConv2D) in a SavedModel: in graphs it runs through "
                    f"tf.py_function, which exists only in this Python process, so the SavedModel could not be "
                    f"served anywhere else. Why: {reason}. Save the model with model.save('model.keras') "
                    "instead, or fix the cause (`python -m tvm_sparseconv.tf_op` builds the op and says what "
                    "is missing)")

        def get_config(self):
            config = super().get_config()
            config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                          padding=self.padding, dilation_rate=self.dilation_rate, activation=self.activation,
                          use_bias=self.use_bias, target=self.target, precision=self.precision)
            return config

        # Weights that change make the cached sparse form and compiled ops stale.
        def set_weights(self, weights):
            super().set_weights(weights)
            self._forget()

        def load_own_variables(self, store):
            super().load_own_variables(store)
            self._forget()

        # --- running ------------------------------------------------------------------------------
        @property
        def _tsc_ops(self) -> dict:
            """The compiled ops, per (input shape, target)."""
            return self._tsc_compiled.ops

        @property
        def sparse_kernel(self) -> SparseKernel:
            """The kernel in tvm_sparseconv's sparse format (converted once)."""
            with self._tsc_lock:
                if self._tsc_sparse is None:
                    self._tsc_sparse = SparseKernel.from_dense(np.asarray(self.kernel.numpy()))
                return self._tsc_sparse

        @property
        def fused_activation(self) -> str | None:
            """The activation the compiled kernel applies itself (relu/relu6), else None."""
            return self.activation if self.activation in FUSED_ACTIVATIONS else None

        def tuning_problem(self, input_shape) -> Problem:
            """This layer's workload for one NHWC input shape, with its real kernel (to tune)."""
            return Problem.from_kernel(self.sparse_kernel, input_shape, self.strides, self.padding.upper(),
                                       self.dilation_rate, self.use_bias, self.fused_activation, name=self.name)

        def compiled(self, input_shape, on_cuda: bool = False):
            """The compiled op for one NHWC input shape (compiled on first use, then cached)."""
            from .. import op as tsc_op

            target = self.target or ("cuda" if on_cuda else "cpu")
            key = (tuple(int(d) for d in input_shape), target)
            op = self._tsc_ops.get(key)
            if op is None:
                kernel = self.sparse_kernel
                bias = None if self.bias is None else np.asarray(self.bias.numpy())
                op = tsc_op.compile(kernel, key[0], self.strides, self.padding.upper(), self.dilation_rate, bias,
                                    self.fused_activation, target, precision=self.precision)
                with self._tsc_lock:
                    op = self._tsc_ops.setdefault(key, op)
            return op

        def _run(self, x):
            from ..interop import on_cuda

            y = self.compiled(x.shape, on_cuda(x))(x)
            return y if self._tsc_after is None else self._tsc_after(y)

        def _forget(self) -> None:
            with self._tsc_lock:
                self._tsc_sparse = None
                self._tsc_compiled = _CompiledOps()

    SparseConv2D.__module__ = "tvm_sparseconv.keras"
    SparseConv2D.__qualname__ = "SparseConv2D"
    return SparseConv2D


class _CompiledOps:
    """A layer's compiled ops. Not a dict attribute: tf_keras would track a dict as checkpointable
    state and then refuse to save it as a SavedModel (it changes outside Keras' wrapper)."""

    def __init__(self) -> None:
        self.ops: dict = {}


def _tf_gpu_for_tvm() -> bool:
    """Whether graphs should run the layer on a GPU: TensorFlow has one and TVM sees one."""
    import tensorflow as tf

    from ..targets import gpu_available

    return bool(tf.config.list_logical_devices("GPU")) and gpu_available()
