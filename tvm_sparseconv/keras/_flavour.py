"""Which Keras: Keras 3 (`keras`, TensorFlow 2.16+'s default `tf.keras`) or Keras 2 (`tf_keras`).

tensorflow-model-optimization works on `tf_keras` models (with `TF_USE_LEGACY_KERAS=1`), plain
TensorFlow 2.21 on Keras 3 ones; the layer and `sparsify` serve both, picked per model.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def active_keras() -> ModuleType:
    """The Keras that `tf.keras` is in this process."""
    import tensorflow as tf

    if tf.keras.__name__.startswith("tf_keras"):  # TF_USE_LEGACY_KERAS=1
        import tf_keras

        return tf_keras
    import keras

    return keras


def keras_of(obj: Any) -> ModuleType | None:
    """The Keras package a model or layer belongs to, or None for a non-Keras object."""
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "tf_keras":
            import tf_keras

            return tf_keras
        if root == "keras":
            import keras

            return keras
    return None
