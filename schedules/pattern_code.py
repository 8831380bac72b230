"""What the emitters of pattern-in-the-code kernels share (`cuda_register_reuse`, `cpu_register_reuse`):
where an output pixel's input lies for a tap of the kernel."""

from __future__ import annotations

from tvm import tirx


def output_pixel(p, output_hw) -> tuple:
    """(image, output row, output column) of flattened output pixel p."""
    oh, ow = output_hw
    rem = tirx.floormod(p, oh * ow)
    return tirx.floordiv(p, oh * ow), tirx.floordiv(rem, ow), tirx.floormod(rem, ow)


def tap_input(p, n_pix: int, input_hw, output_hw, strides, pads, dilations, kh: int, kw: int) -> tuple:
    """((image, row, column) of output pixel p's input at tap (kh, kw), clamped into the image;
    whether it lies inside).

    The emitters load every copy slot, inside the image or not, so the indices are clamped; the
    load and the zeroing outside must be separate statements: TVM simplifies a Select's value
    under its condition, which dropped this clamp once (compute-sanitizer: reads before the input)."""
    (pt, _), (pl, _) = pads
    img, orow, ocol = output_pixel(tirx.min(p, n_pix - 1), output_hw)
    r = orow * strides[0] - pt + kh * dilations[0]
    c = ocol * strides[1] - pl + kw * dilations[1]
    (img, r, c), inside = _clamped(img, r, c, input_hw)
    return (img, r, c), tirx.all(p < n_pix, inside)


def halo_input(out_row, col, input_hw, output_hw, strides, pads, dilations, kh: int,
               offset: int | None = None) -> tuple:
    """((image, row, column) of input column `col` (counted from the padded left edge, in input
    columns) of kernel row `kh` under flattened output row `out_row` (n * OH + oh), clamped into
    the image; whether it lies inside). The halo tiles' copies: a block's segment of an output
    row reads these columns for every tap of the kernel row. `offset`: the input row that many
    rows below the output row's first (instead of kernel row `kh`'s)."""
    (pt, _), (pl, _) = pads
    img, orow = tirx.floordiv(out_row, output_hw[0]), tirx.floormod(out_row, output_hw[0])
    r = orow * strides[0] - pt + (kh * dilations[0] if offset is None else offset)
    return _clamped(img, r, col - pl, input_hw)


def _clamped(img, r, c, input_hw) -> tuple:
    """((image, row, column) with row and column clamped into the image; whether they lie inside)."""
    h, w = input_hw
    clamp = lambda v, hi: tirx.max(tirx.min(v, hi - 1), 0)  # noqa: E731
    return (img, clamp(r, h), clamp(c, w)), tirx.all(r >= 0, r < h, c >= 0, c < w)
