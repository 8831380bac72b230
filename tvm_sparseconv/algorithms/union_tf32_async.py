"""Algorithm "union-tf32-async": union-tf32 with its staging copy asynchronous (`cp.async`), overlapped with the mma.

union-tf32 rounds the input to TF32 as it stages it, so its staging is a computation: each chunk's
copy (global load, round, shared store, barrier) waits before that chunk's mma. Here the input is
rounded as each A fragment element is gathered instead (`union_tf32_te(wl, round_at="fragment")`:
2 integer instructions an element), so the staging is a plain copy (zero for padding), which the
CUDA rule pipelines over the chunks (`schedules/cuda_union_tf32_async.py`) and TVM lowers to
predicated 16-byte `cp.async` into a double-buffered tile: chunk c+1's copy is in flight while
chunk c's mma run. Each staged tile gets half of union-tf32's shared memory
(`union_tf32.STAGED_TILES`), so a KxK layer's block may cover fewer output rows.

Same arithmetic and weights as union-tf32 (`union_tf32.py`; taps are offsets in its own, possibly
smaller, boxes); its own workloads and tuning records. Against union-tf32's synchronous copy on the
H100 (untuned, b32 g8, `benchmarks/experiments/union_tf32_async_copy-v2-nvidia-h100.json`), us:
conv2 3x3 37.7 -> 31.2, conv3 3x3 35.2 -> 28.9, conv4 3x3 34.2 -> 30.7, the stem 63.0 -> 58.8,
conv5 3x3 45.2 -> 46.3 and conv4 1x1 reduce 17.9 -> 21.8 (slower); `compile()` takes whichever
record is faster.
"""

from __future__ import annotations

from ..tir_build import ASYNC_COPY_ATTR
from ..workload import ConvWorkload
from .union_tf32 import UnionTF32


class UnionTF32Async(UnionTF32):
    """union-tf32 rounded at the fragment, its staging a double-buffered `cp.async` copy (CUDA sm_80+; opt-in)."""

    name = "union-tf32-async"
    round_at = "fragment"

    def func_attrs(self, wl: ConvWorkload) -> dict:
        return super().func_attrs(wl) | {ASYNC_COPY_ATTR: True}  # tir_build lowers the pipeline's copy to cp.async


ALGORITHM = UnionTF32Async()
