"""The convolution problem, normalised once: shapes, strides, dilations, padding, epilogue.

`ConvWorkload` is the single description every other module works from (the TE compute, the
schedule rules, the caches, the tuning logs). It follows `tf.nn.conv2d`'s semantics: NHWC input,
HWIO kernel, TensorFlow's arithmetic for "SAME" padding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Sequence, Union

ACTIVATIONS = (None, "relu", "relu6")

Padding = Union[str, Sequence[Sequence[int]]]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Accept `v` or `(v_h, v_w)` (or TF's 4-element `[1, v_h, v_w, 1]`) as positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            seq = [int(v) for v in value]  # type: ignore[union-attr]
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(seq) == 4 and seq[0] == 1 and seq[3] == 1:
            seq = seq[1:3]
        if len(seq) != 2:
            raise ValueError(f"{name} must be an int, (h, w) or [1, h, w, 1], got {value!r}")
        pair = (seq[0], seq[1])
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def output_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    """Output extent along one axis for TensorFlow's "SAME" or "VALID" padding (0 if none fits)."""
    if padding.upper() == "SAME":
        return -(-size // stride)
    extent = (kernel - 1) * dilation + 1
    return max((size - extent) // stride + 1, 0)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: output = ceil(size / stride), extra padding at the end."""
    out = output_size(size, kernel, stride, dilation, "SAME")
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _explicit_pads(padding: Sequence[Sequence[int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    rows = [list(p) for p in padding]
    if len(rows) == 4 and rows[0] == [0, 0] and rows[3] == [0, 0]:  # TF's NHWC form
        rows = rows[1:3]
    if len(rows) != 2 or any(len(r) != 2 for r in rows):
        raise ValueError(
            "explicit padding must be [(top, bottom), (left, right)] "
            f"(or TF's [[0, 0], [t, b], [l, r], [0, 0]]), got {padding!r}"
        )
    (t, b), (l, r) = [[int(v) for v in row] for row in rows]
    if min(t, b, l, r) < 0:
        raise ValueError(f"explicit padding must be >= 0, got {padding!r}")
    return (t, b), (l, r)


@dataclass(frozen=True)
class ConvWorkload:
    """A sparse conv2d problem: everything a compiled kernel is specialised on.

    `algorithm` names the computation (`tvm_sparseconv.algorithms`); `ell_width` is the number of
    stored (padded) nonzeros per output channel, per chunk of `chunk` input channels where the
    algorithm's format has chunks (`chunk=0`: none). Loop extents must be static, so the kernel's
    pattern enters the compiled code only through these sizes.
    """

    input_shape: tuple[int, int, int, int]  # N, H, W, Cin
    kernel_shape: tuple[int, int, int, int]  # KH, KW, Cin, Cout
    ell_width: int
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]  # (top, bottom), (left, right)
    has_bias: bool = False
    activation: str | None = None
    algorithm: str = "ell-gather"
    chunk: int = 0

    @staticmethod
    def create(
        input_shape: Sequence[int],
        kernel_shape: Sequence[int],
        ell_width: int,
        strides: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        dilations: int | Sequence[int] = 1,
        has_bias: bool = False,
        activation: str | None = None,
        allow_empty: bool = False,
    ) -> "ConvWorkload":
        """Validate `tf.nn.conv2d`-style arguments and resolve the padding to explicit pads.

        `allow_empty`: accept, as `tf.nn.conv2d` does, an input or output without elements (batch
        0, a zero-sized image, a kernel that fits the padded input zero times); see `is_empty`.
        Otherwise such shapes are refused (nothing to compile or tune for them).
        """
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4:
            raise ValueError(f"input shape must be NHWC (4 dims), got {tuple(input_shape)}")
        if min(shape) < 0 or (min(shape) < 1 and not allow_empty):
            raise ValueError(f"input shape must be positive, got {shape}")
        kshape = tuple(int(d) for d in kernel_shape)
        if len(kshape) != 4 or min(kshape) < 1:
            raise ValueError(f"kernel shape must be HWIO with positive dims, got {kshape}")
        if shape[3] != kshape[2]:
            raise ValueError(
                f"input has {shape[3]} channels but the kernel expects {kshape[2]} "
                f"(input NHWC {shape}, kernel HWIO {kshape})"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        strides_ = _pair(strides, "strides")
        dil = _pair(dilations, "dilations")
        if isinstance(padding, str):
            mode = padding.upper()
            if mode == "SAME":
                pads = (
                    _same_pads(shape[1], kshape[0], strides_[0], dil[0]),
                    _same_pads(shape[2], kshape[1], strides_[1], dil[1]),
                )
            elif mode == "VALID":
                pads = ((0, 0), (0, 0))
            else:
                raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs, got {padding!r}")
        else:
            pads = _explicit_pads(padding)
        wl = ConvWorkload(shape, kshape, int(ell_width), strides_, dil, pads, bool(has_bias), activation)
        # TensorFlow's output size, (padded - extent + stride) / stride rounded toward zero: below 0
        # is an error there too, 0 an empty output.
        sizes = [(p - e + s) / s for p, e, s in zip(wl.padded_hw, wl.kernel_extent, wl.strides)]
        if min(sizes) <= -1 or (min(sizes) < 1 and not allow_empty):
            oh, ow = ((p - e) // s + 1 for p, e, s in zip(wl.padded_hw, wl.kernel_extent, wl.strides))
            raise ValueError(
                f"the kernel (extent {wl.kernel_extent} with dilation) does not fit the padded input "
                f"{wl.padded_hw}: output would be {oh}x{ow}"
            )
        if wl.is_empty:
            return wl  # nothing is computed: no format or offset limits apply
        if wl.ell_width < 1:
            raise ValueError(f"ell_width must be >= 1, got {ell_width}")
        if shape[3] * wl.gather_hw[0] * wl.gather_hw[1] >= 2**31:
            raise ValueError(f"input too large for 32-bit gather offsets: {shape}")
        return wl

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def kernel_extent(self) -> tuple[int, int]:
        """Height and width covered by the dilated kernel."""
        kh, kw = self.kernel_shape[:2]
        return (kh - 1) * self.dilations[0] + 1, (kw - 1) * self.dilations[1] + 1

    @property
    def padded_hw(self) -> tuple[int, int]:
        (t, b), (l, r) = self.pads
        return self.input_shape[1] + t + b, self.input_shape[2] + l + r

    @property
    def output_hw(self) -> tuple[int, int]:
        (ph, pw), (eh, ew) = self.padded_hw, self.kernel_extent
        (sh, sw) = self.strides
        return max(ph - eh + sh, 0) // sh, max(pw - ew + sw, 0) // sw

    @property
    def is_empty(self) -> bool:
        """No input or no output element (batch 0, a zero-sized image or output): nothing to run."""
        return min(self.input_shape) == 0 or min(self.output_shape) == 0

    @property
    def gather_hw(self) -> tuple[int, int]:
        """Rows and columns of the padded input that any output reads (trailing ones never are)."""
        (oh, ow), (eh, ew) = self.output_hw, self.kernel_extent
        return (oh - 1) * self.strides[0] + eh, (ow - 1) * self.strides[1] + ew

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.input_shape[0], *self.output_hw, self.kernel_shape[3])

    @property
    def out_channels(self) -> int:
        return self.kernel_shape[3]

    def useful_flops(self, nnz: int) -> int:
        """2 x nonzeros x output pixels: the work a sparse kernel cannot avoid."""
        n, oh, ow, _ = self.output_shape
        return 2 * nnz * n * oh * ow

    def dense_flops(self) -> int:
        kh, kw, cin, cout = self.kernel_shape
        return self.useful_flops(kh * kw * cin * cout)

    def with_format(self, algorithm: str, ell_width: int, chunk: int = 0) -> "ConvWorkload":
        """The same layer under another algorithm and format."""
        if ell_width < 1 or chunk < 0:
            raise ValueError(f"ell_width must be >= 1 and chunk >= 0, got {ell_width}, {chunk}")
        return replace(self, algorithm=algorithm, ell_width=int(ell_width), chunk=int(chunk))

    # --- identity ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "ConvWorkload":
        return ConvWorkload(
            tuple(d["input_shape"]),
            tuple(d["kernel_shape"]),
            int(d["ell_width"]),
            tuple(d["strides"]),
            tuple(d["dilations"]),
            tuple(tuple(p) for p in d["pads"]),
            bool(d["has_bias"]),
            d["activation"],
            d.get("algorithm", "ell-gather"),  # records written before there were several
            int(d.get("chunk", 0)),
        )

    def key(self) -> str:
        """A short stable name: used for cache files and tuning-log lookups."""
        blob = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> str:
        n, h, w, c = self.input_shape
        kh, kw, _, co = self.kernel_shape
        return (
            f"{n}x{h}x{w}x{c} * {kh}x{kw}x{c}x{co} {self.algorithm} ell={self.ell_width}"
            + (f"/chunk{self.chunk}" if self.chunk else "")
            + f" s={self.strides} "
            f"d={self.dilations} pads={self.pads}"
            + (" +bias" if self.has_bias else "")
            + (f" {self.activation}" if self.activation else "")
        )
