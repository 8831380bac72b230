"""tvm_sparseconv: conv2d with pruned (sparse) kernels, compiled and tuned with Apache TVM.

    kernel = tvm_sparseconv.SparseKernel.from_dense(w)          # HWIO, converted once
    conv = tvm_sparseconv.compile(kernel, x.shape, padding="SAME")
    y = conv(x)                                                 # tf.Tensor in, tf.Tensor out

Layout: `algorithms/` (the TE math, one module per algorithm), `schedules/` (templates,
`tvm_sparseconv.schedules`), `build.py` (algorithm and schedule choice, compile), `module_cache.py`
(disk cache), `op.py` (the callable), `interop.py` (DLPack), `tf_op/` (the TensorFlow op that runs
compiled modules in graphs and SavedModels; registered with TensorFlow here, or when TensorFlow is
imported later; built on first use; skipped with `TVM_SPARSECONV_NO_TF_OP=1`).
"""

from ._source_tree import ensure_schedules_importable
from .targets import configure_cpu_threads

ensure_schedules_importable()
configure_cpu_threads()  # before any TVM CPU kernel creates the thread pool

from .build import UntunedWarning  # noqa: E402
from .interop import InputCopyWarning  # noqa: E402
from .kernel import SparseKernel, SparseKernelFormatError  # noqa: E402
from .module_cache import CacheWarning  # noqa: E402
from .op import EmptySparseConv2D, SparseConv2D, compile, conv2d  # noqa: E402
from .tuning_records import TuningLogWarning  # noqa: E402
from .workload import ConvWorkload  # noqa: E402
from . import tf_op  # noqa: E402
from .tf_op import TFOpWarning  # noqa: E402

# SavedModels holding the op need it registered before `tf.saved_model.load`: importing this
# package is all a fresh process has to do.
tf_op.load_on_import()

__all__ = [
    "CacheWarning",
    "ConvWorkload",
    "EmptySparseConv2D",
    "InputCopyWarning",
    "SparseConv2D",
    "SparseKernel",
    "SparseKernelFormatError",
    "TFOpWarning",
    "TuningLogWarning",
    "UntunedWarning",
    "compile",
    "conv2d",
]
__version__ = "0.1.0"
