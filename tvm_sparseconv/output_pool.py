"""Output buffers of a CPU op, handed out again once nothing outside the pool refers to them.

A fresh output costs its page faults and zeroing on first touch: on the 2-core znver3 the
headline's kernel took 140.1 ms into a fresh 32 MB output and 122.4 ms into a reused one, in turns
in one process (`benchmarks/experiments/cpu_call_overhead.py`, its JSON beside it; op(x) with the
pool 119.5 ms). So the op keeps a few buffers per shape and reuses one
whose result the caller has dropped.

How it knows: a buffer is a 64-byte aligned numpy array that the caller only ever reaches through
DLPack (TVM's view of it, and the framework's tensor on that view). Every DLPack consumer holds a
reference to the exported array until it releases the memory, and a numpy view made from the
result holds the result, so the array's reference count is back at the pool's own exactly when
nobody can read the buffer any more. A buffer still referenced is never handed out: such a call
takes a new one (kept if the pool has room, else left to the caller alone). The cost: an op holds
up to `KEEP` outputs' memory while it lives (2 x 32 MB for the headline).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from .interop import ALIGNMENT

#: buffers kept per pool: one for the result the caller still holds, one for the next call
KEEP = 2


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 C-contiguous array whose data starts on a 64-byte boundary."""
    n = int(np.prod(shape))
    raw = np.empty(n * 4 + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + n * 4].view(np.float32).reshape(shape)


def _unreferenced_count() -> int:
    """The reference count `OutputPool.take` sees for a buffer that only its list holds."""
    probe = [np.empty(1, np.float32)]
    return sys.getrefcount(probe[0])


class OutputPool:
    """Up to `keep` output buffers of one shape; `take()` returns a free one or a new one."""

    def __init__(self, shape: tuple[int, ...], keep: int = KEEP):
        self.shape = tuple(shape)
        self._keep = keep
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._free_count = _unreferenced_count()

    def take(self) -> np.ndarray:
        """A buffer of `shape` that nobody outside the pool refers to (its contents are stale)."""
        with self._lock:
            for i in range(len(self._buffers)):
                if sys.getrefcount(self._buffers[i]) == self._free_count:
                    return self._buffers[i]  # referenced by the caller from here on: not free
            buf = aligned_empty(self.shape)
            if len(self._buffers) < self._keep:
                self._buffers.append(buf)
            return buf

    def __len__(self) -> int:
        return len(self._buffers)
