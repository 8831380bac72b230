"""A Conv2D's BatchNormalization (and a ReLU after it) folded into its sparse replacement.

At inference a BatchNormalization after a convolution is a per-channel affine map,
``(conv(x) + b - mean) * gamma / sqrt(var + eps) + beta``: it folds into the kernel (each output
channel's weights scaled, so the zeros stay zeros) and the bias, and a ReLU after it is fused into
the compiled kernel. Where `sparsify` makes such a convolution sparse, the model then runs one op
instead of three (the BatchNormalization and ReLU layers become `FoldedIntoSparse`, an identity). Pruned CNNs (ResNet,
MobileNet) are made of these chains.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .layer import FUSED_ACTIVATIONS, activation_name


@dataclass(frozen=True)
class Chain:
    """A Conv2D's BatchNormalization, and the ReLU after it (None where there is none)."""

    batchnorm: Any
    relu: Any | None
    activation: str | None = None  # the ReLU's ("relu" or "relu6"), applied by the sparse kernel

    @property
    def layer_names(self) -> list[str]:
        return [self.batchnorm.name] + ([self.relu.name] if self.relu is not None else [])


@functools.cache
def folded_layer_class(keras: ModuleType) -> type:
    """The layer that stands where a folded BatchNormalization or ReLU was: it passes its input
    on (an identity that takes the arguments the replaced layer was called with)."""

    @keras.utils.register_keras_serializable(package="tvm_sparseconv")
    class FoldedIntoSparse(keras.layers.Layer):
        """Folded into the SparseConv2D before it by `sparsify`: passes its input on."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, training=None, mask=None):  # noqa: ARG002 - BatchNormalization's arguments
            return inputs

        def compute_output_shape(self, input_shape):
            return input_shape

    return FoldedIntoSparse


def _producer_name(node) -> str:
    op = getattr(node, "operation", None) or getattr(node, "layer", None)  # Keras 3 / tf_keras
    return op.name


def relu_name(layer, keras: ModuleType) -> str | None:
    """"relu" or "relu6" where `layer` is exactly that activation (a ReLU layer or an Activation), else None."""
    kind = type(layer).__name__
    if kind == "ReLU":
        cfg = layer.get_config()
        if float(cfg.get("negative_slope", 0) or 0) != 0 or float(cfg.get("threshold", 0) or 0) != 0:
            return None
        max_value = cfg.get("max_value")
        return {None: "relu", 6.0: "relu6"}.get(None if max_value is None else float(max_value))
    if kind == "Activation":
        try:
            name = activation_name(layer.activation, keras)
        except (ValueError, AttributeError):
            return None
        return name if name in FUSED_ACTIVATIONS else None
    return None


def _is_channel_batchnorm(layer, keras: ModuleType) -> bool:
    if not isinstance(layer, keras.layers.BatchNormalization) or not layer.built:
        return False
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return list(axis) in ([-1], [3])


def chains(model, keras: ModuleType) -> dict[str, Chain]:
    """Conv name -> its `Chain`, for each linear Conv2D (called once) whose output goes to a
    BatchNormalization over the channel axis and nowhere else (nor out of the model); the ReLU
    where the BatchNormalization's output goes to a plain ReLU and nowhere else."""
    consumers: dict[str, list] = defaultdict(list)
    calls: dict[str, int] = {}
    for layer in model.layers:
        nodes = list(getattr(layer, "_inbound_nodes", []))
        calls[layer.name] = len(nodes)
        for node in nodes:
            for parent in node.parent_nodes:
                consumers[_producer_name(parent)].append(layer)
    outputs = {t._keras_history[0].name for t in model.outputs}

    def only_consumer(layer):
        after = consumers[layer.name]
        if layer.name in outputs or len(after) != 1 or calls.get(after[0].name) != 1:
            return None
        return after[0]

    found = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D) or calls[layer.name] != 1:
            continue
        try:
            if activation_name(layer.activation, keras) is not None:
                continue  # an activation between the convolution and the BatchNormalization
        except ValueError:
            continue
        bn = only_consumer(layer)
        if bn is None or not _is_channel_batchnorm(bn, keras):
            continue
        relu = only_consumer(bn)
        name = relu_name(relu, keras) if relu is not None else None
        found[layer.name] = Chain(bn, relu if name else None, name)
    return found


def folded_weights(conv, batchnorm) -> tuple[np.ndarray, np.ndarray]:
    """(kernel HWIO, bias) of `conv` followed by `batchnorm` at inference (its moving statistics),
    computed in float64."""
    w = np.asarray(conv.kernel.numpy(), np.float64)
    b = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else 0.0
    gamma = np.asarray(batchnorm.gamma.numpy(), np.float64) if batchnorm.scale else 1.0
    beta = np.asarray(batchnorm.beta.numpy(), np.float64) if batchnorm.center else 0.0
    scale = gamma / np.sqrt(np.asarray(batchnorm.moving_variance.numpy(), np.float64) + batchnorm.epsilon)
    mean = np.asarray(batchnorm.moving_mean.numpy(), np.float64)
    bias = (b - mean) * scale + beta
    return (w * scale).astype(np.float32), np.broadcast_to(bias, (w.shape[-1],)).astype(np.float32)
