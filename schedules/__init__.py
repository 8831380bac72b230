"""Schedule templates (design spaces) for the sparse convolution, one rule class per strategy.

Imported by the library as `tvm_sparseconv.schedules` (pyproject maps this folder there).
`default_rule(target)` is the untuned fallback; `rules_for(target)` lists every strategy to tune.
"""

from __future__ import annotations

from tvm.target import Target

from .common import RULE_ANNOTATION, SparseConvRule
from .cpu import CPUDirectTile, CPURowTile
from .cuda_gather import CUDAEllGather, CUDAEllPixels, CUDAEllSharedWeights, CUDAEllSplitK
from .cuda_nhwc_direct import CUDANhwcDirect, CUDANhwcSplitK
from .cuda_union_tf32 import CUDAUnionTF32
from .cuda_union_tf32_async import CUDAUnionTF32Async

__all__ = ["RULES", "RULE_ANNOTATION", "SparseConvRule", "default_rule", "rule_by_name", "rules_for"]

RULES: tuple[SparseConvRule, ...] = (CPUDirectTile(), CPURowTile(), CUDAEllGather(), CUDAEllSharedWeights(), CUDAEllPixels(),
                                     CUDAEllSplitK(), CUDANhwcDirect(), CUDANhwcSplitK(), CUDAUnionTF32(),
                                     CUDAUnionTF32Async())


def rules_for(target: Target, algorithm: str | None = None) -> list[SparseConvRule]:
    """Every rule written for `target`'s kind (and `algorithm`, if given), in order of preference."""
    return [r for r in RULES if r.target_kind == target.kind.name and algorithm in (None, r.algorithm)]


def default_rule(target: Target, algorithm: str = "ell-gather") -> SparseConvRule:
    """The rule whose untuned (`tunable=False`) schedule is used when no tuning record exists."""
    rules = rules_for(target, algorithm)
    if not rules:
        raise ValueError(f"no schedule template for algorithm {algorithm!r} on target kind {target.kind.name!r}")
    return rules[0]


def rule_by_name(name: str) -> SparseConvRule:
    for r in RULES:
        if r.name == name:
            return r
    raise KeyError(f"no schedule rule named {name!r}; known: {[r.name for r in RULES]}")
