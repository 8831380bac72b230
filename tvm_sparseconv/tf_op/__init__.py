"""A TensorFlow op that runs compiled tvm_sparseconv modules inside graphs, with no Python.

    from tvm_sparseconv import tf_op
    y = tf_op.sparse_conv2d(x, compiled)     # `compiled`: a `tvm_sparseconv.compile(...)` result

`TvmSparseConv2D` (C++, `tvm_sparseconv_tf.cc`) carries the compiled shared library as an
attribute and its weights as graph constants, so graphs, `tf.function`, `model.predict` and
SavedModels hold everything they need: a fresh process only has to `import tvm_sparseconv` (which
registers this op with TensorFlow, at once or when TensorFlow is imported) before
`tf.saved_model.load`.

The library is built on first use with the system C++ compiler against the installed TensorFlow
(`builder.py`; `make setup` does it), cached, and loaded with `tf.load_op_library`. If it cannot be
built, `available()` is False, `unavailable_reason()` says why, and the Keras layer falls back to
`tf.py_function` (which a SavedModel cannot hold: exporting such a model is refused).

Shapes: the module is compiled for one NHWC shape (B, H, W, C); the op takes any batch that is a
multiple of B and runs the module on each slice of B images in turn. A graph traced with an unknown
batch gets a batch-1 module and so serves every batch (see `SparseConv2D` in `keras/layer.py`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from .._warnings import warn_user
from .builder import OpLibraryError, build, library_path  # noqa: F401 - public API

OP_NAME = "TvmSparseConv2D"
#: Setting this (to anything) keeps `import tvm_sparseconv` from loading the op library.
NO_LOAD_ENV = "TVM_SPARSECONV_NO_TF_OP"


class TFOpWarning(UserWarning):
    """The TensorFlow op library could not be built or loaded; graphs fall back to tf.py_function."""


_LOCK = threading.Lock()
_LIBRARY: ModuleType | None = None
_ERROR: str | None = None


def load() -> ModuleType:
    """The loaded op library (built first if needed; once per process). OpLibraryError if it
    cannot be built or loaded; later calls raise the same error without trying again."""
    global _LIBRARY, _ERROR
    # TensorFlow first, outside the lock: where it is not imported yet, its import runs the hook of
    # `load_on_import`, which calls load() itself (holding the lock here would deadlock that call).
    try:
        import tensorflow as tf
    except ImportError as e:
        raise OpLibraryError(f"TensorFlow is not importable ({e}): the op needs it") from e

    with _LOCK:
        if _LIBRARY is not None:
            return _LIBRARY
        if _ERROR is not None:
            raise OpLibraryError(_ERROR)
        try:
            path = build()
            _LIBRARY = tf.load_op_library(str(path))
        except OpLibraryError as e:
            _ERROR = str(e)
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a library that does not load: say so, fall back
            _ERROR = f"loading tvm_sparseconv's TensorFlow op failed: {type(e).__name__}: {e}"
            raise OpLibraryError(_ERROR) from e
        return _LIBRARY


def available() -> bool:
    """True when the op library is built and loaded (trying once)."""
    try:
        load()
        return True
    except OpLibraryError:
        return False


def unavailable_reason() -> str | None:
    """Why the op library is not available (None when it is)."""
    try:
        load()
        return None
    except OpLibraryError as e:
        return str(e)


def load_on_import() -> None:
    """What `import tvm_sparseconv` does: register the op with TensorFlow, so that SavedModels holding
    it load: at once if TensorFlow is imported, else right after TensorFlow's own import (processes
    that never import TensorFlow, such as tuning workers, do not pay for it). A failure is a
    `TFOpWarning`, not an error."""
    if os.environ.get(NO_LOAD_ENV):
        return
    if "tensorflow" in sys.modules:
        _load_or_warn()
    elif not any(isinstance(f, _AfterTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTensorFlowImport())


def _load_or_warn() -> None:
    try:
        load()
    except OpLibraryError as e:
        warn_user(f"{e}\ntvm_sparseconv's Keras layer falls back to tf.py_function in graphs, and models "
                  "using it cannot be exported as SavedModels", TFOpWarning)


class _AfterTensorFlowImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: finds `tensorflow` with the other finders, and loads the op library
    once TensorFlow's module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _load_or_warn()

        spec.loader.exec_module = exec_module
        return spec


# --- calling the op ---------------------------------------------------------------------------
def module_bytes(compiled) -> bytes:
    """The shared library of a compiled op (`tvm_sparseconv.compile`), as `export_library` writes it."""
    return _artifacts(compiled)[0]


def _artifacts(compiled) -> tuple[bytes, list[np.ndarray]]:
    """(module bytes, weight arrays) of a compiled op, kept on it (computed once)."""
    found = getattr(compiled, "_tf_op_artifacts", None)
    if found is not None:
        return found
    build_result = compiled._build  # noqa: SLF001 - the op and its module belong to this package
    data = None
    path = build_result.cache_path
    if path is not None:
        from .. import module_cache

        try:
            if module_cache.verify(Path(path)) is None:
                data = Path(path).read_bytes()
        except OSError:
            data = None
    if data is None:  # not kept in the disk cache: export it here
        with tempfile.TemporaryDirectory(prefix="tvm_sparseconv_") as tmp:
            out = Path(tmp) / "module.so"
            build_result.module.export_library(str(out))
            data = out.read_bytes()
    weights = [np.ascontiguousarray(w.numpy()) for w in compiled._weights]  # noqa: SLF001
    compiled._tf_op_artifacts = found = (data, weights)
    return found


def sparse_conv2d(x, compiled, name: str | None = None):
    """Run `compiled` (a `tvm_sparseconv.compile(...)` op) on the NHWC float32 tensor `x` through the
    TensorFlow op: in a graph it becomes one `TvmSparseConv2D` node holding the module and its
    weights. `x` may have any batch that is a multiple of the compiled one."""
    import tensorflow as tf

    from ..op import EmptySparseConv2D

    lib = load()
    if isinstance(compiled, EmptySparseConv2D):
        raise ValueError("an empty workload has no module; compute its output without the op")
    data, weights = _artifacts(compiled)
    if tf.executing_eagerly():  # eager tensors of the weights, made once (a graph gets its own constants)
        eager = getattr(compiled, "_tf_op_eager_weights", None)
        if eager is None:
            compiled._tf_op_eager_weights = eager = [tf.constant(w) for w in weights]
        tensors = eager
    else:
        tensors = [tf.constant(w) for w in weights]
    # A strided layer on a CPU runs on its input's stride phases (`stride_phases`): the op copies
    # them (TensorFlow's own strided slice took longer than a whole 1x1 layer, checked once)
    phases = compiled.phases
    return lib.tvm_sparse_conv2d(x, tensors, module=data, function=_function_name(),
                                 input_shape=list(compiled.input_shape),
                                 input_strides=list(phases.strides if phases else (1, 1)),
                                 input_pads=list(phases.pads if phases else (0, 0)),
                                 input_phases=list(phases.phases if phases else (1, 1)),
                                 conv_input_shape=list(compiled.conv_input_shape),
                                 output_shape=list(compiled.output_shape), name=name)


def _function_name() -> str:
    from ..build import FUNC_NAME

    return FUNC_NAME
