"""Keras integration: the `SparseConv2D` layer and `sparsify(model)` for pruned models.

    from tvm_sparseconv.keras import sparsify
    tune_layers(pruned_model, trials=64)            # optional: tune each pruned layer for this device
    fast_model, report = sparsify(pruned_model)     # pruned Conv2D -> SparseConv2D where faster (BN folded in)
    fast_model.save("fast.keras"); keras.models.load_model("fast.keras")   # after this import
    fast_model.export("served/")     # a SavedModel: tf.saved_model.load it anywhere after `import tvm_sparseconv`

Works with Keras 3 (TensorFlow's default `tf.keras`) and with Keras 2 (`tf_keras`, which
tensorflow-model-optimization uses, with `TF_USE_LEGACY_KERAS=1`): `SparseConv2D` here is the layer
for the Keras that `tf.keras` is; `sparsify` uses the one the model was built with.
"""

from ._flavour import active_keras
from .layer import FUSED_ACTIVATIONS, NotExportableError, sparse_conv2d_class
from .sparsify import LayerDecision, SparsifyReport, sparsify, unsupported_reason
from .tune import layer_problems, tune_layers

#: The layer class for the active Keras (importing this module registers it for `load_model`).
SparseConv2D = sparse_conv2d_class(active_keras())

__all__ = [
    "FUSED_ACTIVATIONS",
    "LayerDecision",
    "NotExportableError",
    "SparseConv2D",
    "SparsifyReport",
    "sparse_conv2d_class",
    "layer_problems",
    "sparsify",
    "tune_layers",
    "unsupported_reason",
]
