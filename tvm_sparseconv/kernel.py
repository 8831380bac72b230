"""`SparseKernel`: a pruned conv2d kernel, converted once into the padded per-channel format.

Format ("ELL" per output channel): for each output channel `co`, its nonzeros sorted by
(input channel, row, column), padded to the same count `ell_width` with value 0 at index (0,0,0).
The compute reads `values[co, k]` and a packed input offset built from `(kh, kw, ci)[co, k]` for
the input shape it is compiled for (see each algorithm's `pack`, e.g.
`algorithms.ell_gather.pack_offsets`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_NAME = "tvm_sparseconv.SparseKernel/ell"
FORMAT_VERSION = 1
_INDEX_DTYPE = np.int32
#: ELL width is a multiple of this, so GPU schedules can load 4 values/offsets as one vector.
ELL_ALIGN = 4


class SparseKernelFormatError(ValueError):
    """A saved kernel file is corrupt, foreign, or from an unsupported format version."""


def _as_numpy(w: Any) -> np.ndarray:
    """A numpy view of a numpy array, tf.Tensor, or any array-like (one copy at most)."""
    if hasattr(w, "numpy") and callable(w.numpy):  # tf.Tensor, torch.Tensor (CPU)
        w = w.numpy()
    return np.asarray(w)


def _stored_mask(counts, width: int) -> np.ndarray:
    """(Cout, width) bool: which ELL entries of channels holding `counts` nonzeros are real ones."""
    return np.arange(width)[None, :] < np.asarray(counts)[:, None]


@dataclass(frozen=True, eq=False)
class SparseKernel:
    """A conv2d kernel in TensorFlow's HWIO layout, stored as per-output-channel padded nonzeros.

    Build with `SparseKernel.from_dense`; the arrays are read-only.
    """

    shape: tuple[int, int, int, int]  # KH, KW, Cin, Cout
    values: np.ndarray  # (Cout, ell_width) float32, padding = 0
    kh: np.ndarray  # (Cout, ell_width) int32
    kw: np.ndarray  # (Cout, ell_width) int32
    ci: np.ndarray  # (Cout, ell_width) int32
    counts: np.ndarray  # (Cout,) int32: real nonzeros per output channel

    # --- construction ------------------------------------------------------------------------
    @staticmethod
    def from_dense(w: Any, threshold: float = 0.0) -> "SparseKernel":
        """Convert an HWIO kernel (numpy array or tf.Tensor), dropping entries with |w| <= threshold."""
        arr = _as_numpy(w)
        if arr.ndim != 4:
            raise ValueError(
                f"kernel must be HWIO (KH x KW x Cin x Cout, 4 dims), got shape {arr.shape}"
            )
        if arr.dtype != np.float32:
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"kernel must be float32, got {arr.dtype}")
            arr = arr.astype(np.float32)
        if 0 in arr.shape:
            raise ValueError(f"kernel has an empty dimension: shape {arr.shape}")
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(
                f"kernel must be finite; found {arr[tuple(bad)]} at HWIO index {tuple(int(i) for i in bad)}"
            )
        threshold = float(threshold)
        if not np.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")

        kh_, kw_, cin, cout = arr.shape
        # (Cout, Cin, KH, KW) so that each channel's nonzeros come out sorted by (ci, kh, kw):
        # neighbouring nonzeros then read neighbouring input.
        per_channel = arr.transpose(3, 2, 0, 1).reshape(cout, -1)
        keep = np.abs(per_channel) > threshold
        counts = keep.sum(axis=1).astype(_INDEX_DTYPE)
        width = -(-max(int(counts.max()), 1) // ELL_ALIGN) * ELL_ALIGN

        values = np.zeros((cout, width), np.float32)
        flat_idx = np.zeros((cout, width), np.int64)
        rank = np.cumsum(keep, axis=1) - 1  # position of each kept entry within its channel
        co_idx, col = np.nonzero(keep)
        values[co_idx, rank[co_idx, col]] = per_channel[co_idx, col]
        flat_idx[co_idx, rank[co_idx, col]] = col
        ci = flat_idx // (kh_ * kw_)
        khi = (flat_idx // kw_) % kh_
        kwi = flat_idx % kw_
        return SparseKernel._make(arr.shape, values, khi, kwi, ci, counts)

    @staticmethod
    def _make(shape, values, kh, kw, ci, counts) -> "SparseKernel":
        # Each channel's entries in (ci, kh, kw) order, whatever order a kernel file stores them in:
        # the packers rely on it (runs of input channels; neighbouring nonzeros read neighbouring input).
        kh_, kw_, _, _ = shape
        padding = ~_stored_mask(counts, np.shape(values)[1])
        key = np.where(padding, np.iinfo(np.int64).max,
                       (np.asarray(ci, np.int64) * kh_ + np.asarray(kh)) * kw_ + np.asarray(kw))
        order = np.argsort(key, axis=1, kind="stable")
        values, kh, kw, ci = (np.take_along_axis(np.asarray(a), order, axis=1) for a in (values, kh, kw, ci))
        arrays = [
            np.ascontiguousarray(values, np.float32),
            np.ascontiguousarray(kh, _INDEX_DTYPE),
            np.ascontiguousarray(kw, _INDEX_DTYPE),
            np.ascontiguousarray(ci, _INDEX_DTYPE),
            np.ascontiguousarray(counts, _INDEX_DTYPE),
        ]
        for a in arrays:
            a.setflags(write=False)
        return SparseKernel(tuple(int(d) for d in shape), *arrays)

    # --- properties --------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of stored nonzeros (padding excluded)."""
        return int(self.counts.sum())

    @property
    def density(self) -> float:
        """Fraction of the dense kernel's entries that are nonzero."""
        return self.nnz / float(np.prod(self.shape))

    @property
    def ell_width(self) -> int:
        """Stored entries per output channel (largest channel count, rounded up to ELL_ALIGN)."""
        return int(self.values.shape[1])

    @property
    def nnz_per_output_channel(self) -> np.ndarray:
        """Nonzeros of each output channel, shape (Cout,)."""
        return self.counts

    def stored(self) -> np.ndarray:
        """(Cout, ell_width) bool: which ELL entries are real nonzeros (the rest is padding)."""
        return _stored_mask(self.counts, self.ell_width)

    def compressed_rows(self, taps: bool = False) -> tuple[np.ndarray, ...]:
        """The nonzeros as compressed sparse rows, without the ELL padding: (row starts, Cout + 1
        int64; input channels, int32; values, float32), channel by channel, each row sorted by
        (input channel, kh, kw). With `taps`: (row starts, input channels, kh, kw, values)."""
        mask = self.stored()
        starts = np.concatenate([[0], np.cumsum(np.asarray(self.counts, np.int64))])
        ci, kh, kw = (np.asarray(a, np.int32)[mask] for a in (self.ci, self.kh, self.kw))
        values = np.asarray(self.values, np.float32)[mask]
        if not taps:
            return starts, ci, values
        return starts, ci, kh, kw, values

    def row_pointers(self, step: int) -> np.ndarray:
        """(Cout, ceil(Cin / step) + 1) int32: where, in `compressed_rows`' order, each channel's
        nonzeros of input channel ``step * i`` onwards start (the last column: where its row ends),
        so that a chunk of input channels that is a multiple of `step` is a run of each row."""
        starts, ci, _ = self.compressed_rows()
        cin, cout = self.shape[2], self.shape[3]
        bounds = np.arange(-(-cin // step) + 1) * step  # the last is >= cin, below the next row's keys
        row_of = np.repeat(np.arange(cout, dtype=np.int64), np.diff(starts))
        pitch = cin + step
        return np.searchsorted(row_of * pitch + ci,  # ascending: rows in turn, each by input channel
                               np.arange(cout)[:, None] * pitch + bounds[None, :]).astype(np.int32)

    def to_dense(self) -> np.ndarray:
        """The HWIO float32 kernel this was built from (entries under the threshold are 0)."""
        out = np.zeros(self.shape, np.float32)
        co = np.broadcast_to(np.arange(self.shape[3])[:, None], self.values.shape)
        mask = self.stored()
        out[self.kh[mask], self.kw[mask], self.ci[mask], co[mask]] = self.values[mask]
        return out

    def __repr__(self) -> str:
        return f"SparseKernel(shape={self.shape}, nnz={self.nnz}, density={self.density:.4f})"

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write one `.npz` file with the format name and version (atomic: no half-written file)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT_NAME),
                format_version=np.array(FORMAT_VERSION),
                shape=np.array(self.shape, np.int64),
                values=self.values,
                kh=self.kh,
                kw=self.kw,
                ci=self.ci,
                counts=self.counts,
            )
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike) -> "SparseKernel":
        """Read a file written by `save`, checking every array; raises `SparseKernelFormatError`."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # zipfile/pickle/format errors all mean "not our file"
            raise SparseKernelFormatError(f"{path}: not a readable .npz file ({e})") from e
        return _validated(path, data)


def _validated(path: str, d: dict) -> SparseKernel:
    def fail(msg: str):
        raise SparseKernelFormatError(f"{path}: {msg}")

    needed = {"format", "format_version", "shape", "values", "kh", "kw", "ci", "counts"}
    if not needed <= d.keys():
        fail(f"not a SparseKernel file: expected arrays {sorted(needed)}, found {sorted(d)}")
    if str(d["format"]) != FORMAT_NAME:
        fail(f"format is {str(d['format'])!r}, expected {FORMAT_NAME!r}")
    if int(d["format_version"]) != FORMAT_VERSION:
        fail(f"format version {int(d['format_version'])}, this library reads version {FORMAT_VERSION}")
    shape = tuple(int(v) for v in np.asarray(d["shape"]).ravel())
    if len(shape) != 4 or min(shape) < 1:
        fail(f"shape must be 4 positive ints (HWIO), got {shape}")
    kh_, kw_, cin, cout = shape
    values, counts = d["values"], d["counts"]
    if (
        values.dtype != np.float32 or values.ndim != 2 or values.shape[0] != cout
        or values.shape[1] < 1 or values.shape[1] % ELL_ALIGN
    ):
        fail(
            f"values must be float32 of shape ({cout}, width), width a positive multiple of "
            f"{ELL_ALIGN}, got {values.dtype} {values.shape}"
        )
    for name, hi in (("kh", kh_), ("kw", kw_), ("ci", cin)):
        a = d[name]
        if a.shape != values.shape or not np.issubdtype(a.dtype, np.integer):
            fail(f"{name} must be integers of shape {values.shape}, got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= hi):
            fail(f"{name} indices must lie in [0, {hi}), found [{a.min()}, {a.max()}]")
    if counts.shape != (cout,) or not np.issubdtype(counts.dtype, np.integer):
        fail(f"counts must be integers of shape ({cout},), got {counts.dtype} {counts.shape}")
    if counts.min() < 0 or counts.max() > values.shape[1]:
        fail(f"counts must lie in [0, {values.shape[1]}], found [{counts.min()}, {counts.max()}]")
    if not np.isfinite(values).all():
        fail("values contain NaN or Inf")
    padding = ~_stored_mask(counts, values.shape[1])
    if np.any(values[padding] != 0):
        fail("padding entries beyond each channel's count must be 0")
    flat = ((d["ci"].astype(np.int64) * kh_ + d["kh"]) * kw_ + d["kw"])[~padding]
    co = np.broadcast_to(np.arange(cout)[:, None], values.shape)[~padding]
    if np.unique(co * (kh_ * kw_ * cin) + flat).size != flat.size:
        fail("a kernel position is stored twice")
    return SparseKernel._make(shape, values, d["kh"], d["kw"], d["ci"], counts)
