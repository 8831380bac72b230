"""Named problem sets, defined once: used by the demo, the tuner, the benchmarks and the tests.

A `Problem` is a layer shape plus a density; its kernel is a magnitude-pruned random kernel drawn
from a fixed seed, so every tool sees the same sparsity pattern (and so the same ELL width).
Pruning is elementwise unless a problem asks for blocks of output channels (`Problem.block`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .kernel import SparseKernel
from .workload import ConvWorkload, Padding


def random_pruned_kernel(shape: Sequence[int], density: float, rng: np.random.Generator,
                         block: int = 1) -> np.ndarray:
    """A normal(0,1) HWIO kernel magnitude-pruned to exactly round(density * size) nonzeros.

    `block` > 1: pruned in blocks of `block` consecutive output channels at each (kh, kw, ci),
    ranked by their mean magnitude (as tfmot's block pruning with AVG pooling ranks blocks; tfmot
    0.8 offers it for 2-D weights only, not convolutions): round(density * blocks) whole blocks
    are kept, so every group of `block` channels shares one set of taps."""
    w = rng.standard_normal(tuple(shape), dtype=np.float32)
    if block > 1:
        if w.shape[-1] % block:
            raise ValueError(f"output channels {w.shape[-1]} are not a multiple of the block {block}")
        blocks = w.reshape(*w.shape[:-1], w.shape[-1] // block, block)
        keep = int(round(density * blocks[..., 0].size))
        score = np.abs(blocks).mean(axis=-1).ravel()
        pruned = np.ones(score.size, bool)
        pruned[np.argsort(-score, kind="stable")[:keep]] = False
        blocks[pruned.reshape(blocks.shape[:-1])] = 0.0
        return w
    keep = int(round(density * w.size))
    if keep <= 0:
        return np.zeros_like(w)
    if keep < w.size:
        cut = np.partition(np.abs(w).ravel(), w.size - keep)[w.size - keep]
        w[np.abs(w) < cut] = 0.0
    return w


@dataclass(frozen=True)
class Problem:
    """One conv layer with a pruned kernel; `sweep`/`value` place it on a benchmark plot."""

    name: str
    input_shape: tuple[int, int, int, int]
    kernel_shape: tuple[int, int, int, int]
    density: float
    strides: int | tuple[int, int] = 1
    padding: Padding = "SAME"
    sweep: str = ""
    value: float = 0.0
    seed: int = 0
    dilations: int | tuple[int, int] = 1
    has_bias: bool = False
    activation: str | None = None
    #: how many layers of a network have this shape (network sets add up `count` x time)
    count: int = 1
    #: pruned in blocks of this many consecutive output channels (`random_pruned_kernel`); 1: elementwise
    block: int = 1
    #: a user's own kernel (see `from_kernel`); None: a random kernel pruned to `density`
    kernel: SparseKernel | None = field(default=None, compare=False, repr=False)
    #: the problem as given where this one is how a target computes it (`for_target`), else None
    layer: "Problem | None" = field(default=None, compare=False, repr=False)

    @staticmethod
    def from_kernel(kernel: SparseKernel, input_shape, strides=1, padding: Padding = "SAME", dilations=1,
                    has_bias: bool = False, activation: str | None = None, name: str = "user") -> "Problem":
        """A problem for a given (e.g. loaded) kernel: tuned on its real sparsity pattern."""
        return Problem(name, tuple(int(d) for d in input_shape), kernel.shape, kernel.density, strides,
                       padding, dilations=dilations, has_bias=has_bias, activation=activation, kernel=kernel)

    def dense_kernel(self) -> np.ndarray:
        if self.kernel is not None:
            return self.kernel.to_dense()
        return random_pruned_kernel(self.kernel_shape, self.density, np.random.default_rng(self.seed), self.block)

    def sparse_kernel(self) -> SparseKernel:
        return self.kernel if self.kernel is not None else SparseKernel.from_dense(self.dense_kernel())

    def workload(self, kernel: SparseKernel | None = None, algorithm: str = "ell-gather") -> ConvWorkload:
        """The layer as `algorithm` computes it (its format sizes come from the kernel)."""
        from . import algorithms  # the algorithms import TVM; the problem sets need not

        kernel = kernel or self.sparse_kernel()
        wl = ConvWorkload.create(
            self.input_shape, self.kernel_shape, kernel.ell_width, self.strides, self.padding,
            self.dilations, self.has_bias, self.activation,
        )
        return wl if algorithm == wl.algorithm else algorithms.workload_for(kernel, wl, algorithm)

    def for_target(self, target_kind: str) -> "Problem":
        """The problem as `compile()` computes it on `target_kind`: on CPUs a strided layer is the
        stride-1 layer on its input's stride phases (`stride_phases`), so that is what gets tuned and
        recorded (its kernel the phased one, the same nonzeros); otherwise the problem itself."""
        if target_kind != "llvm":
            return self
        from .stride_phases import StridePhases  # imports TVM; the problem sets need not

        wl = self.workload()
        phases = StridePhases.of(wl)
        if phases is None:
            return self
        inner = phases.workload(wl)
        return replace(self, input_shape=inner.input_shape, kernel_shape=inner.kernel_shape, strides=1,
                       padding="VALID", dilations=1, kernel=phases.kernel(self.sparse_kernel()), layer=self)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]


#: output channels per pruning block in the block-pruned sets: union-tf32's group (mma n = 8)
GROUP_BLOCK = 8

HEADLINE = Problem("headline", (1, 256, 512, 32), (11, 11, 32, 64), 0.1, sweep="headline", value=0.1)


def _sweeps() -> dict[str, list[Problem]]:
    """The original op's five sweeps, at 10% nonzeros unless the density is what is swept."""
    s: dict[str, list[Problem]] = {}
    s["kernel_size"] = [
        Problem(f"ksize{k}", (1, 256, 512, 3), (k, k, 3, 64), 0.1, sweep="kernel_size", value=k)
        for k in (1, 3, 5, 7, 9, 11)
    ]
    s["in_channels"] = [
        Problem(f"cin{c}", (1, 256, 512, c), (11, 11, c, 3), 0.1, sweep="in_channels", value=c)
        for c in (1, 2, 4, 8, 16, 32, 64)
    ]
    s["out_channels"] = [
        Problem(f"cout{c}", (1, 256, 512, 3), (11, 11, 3, c), 0.1, sweep="out_channels", value=c)
        for c in (1, 2, 4, 8, 16, 32, 64, 128)
    ]
    s["density"] = [
        Problem(f"density{d:g}", HEADLINE.input_shape, HEADLINE.kernel_shape, d, sweep="density", value=d)
        for d in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    ]
    s["image_size"] = [
        Problem(f"img{n}", (1, n, n, 3), (11, 11, 3, 64), 0.1, sweep="image_size", value=n)
        for n in (64, 128, 256, 512, 1024)
    ]
    return s


# ResNet-50 (v1.5: stride on the 3x3) at 224x224: (name, input HW, Cin, Cout, kernel, stride, count),
# count = how many of its 53 convolutions have that shape. The first 15 are the per-stage sweeps.
_RESNET50_LAYERS = [
    ("conv2_3x3", 56, 64, 64, 3, 1, 3),
    ("conv3_3x3_s2", 56, 128, 128, 3, 2, 1),
    ("conv3_3x3", 28, 128, 128, 3, 1, 3),
    ("conv4_3x3_s2", 28, 256, 256, 3, 2, 1),
    ("conv4_3x3", 14, 256, 256, 3, 1, 5),
    ("conv5_3x3_s2", 14, 512, 512, 3, 2, 1),
    ("conv5_3x3", 7, 512, 512, 3, 1, 2),
    ("conv2_1x1_reduce", 56, 256, 64, 1, 1, 2),
    ("conv2_1x1_expand", 56, 64, 256, 1, 1, 4),  # 3 expands + the first block's projection
    ("conv3_1x1_reduce", 28, 512, 128, 1, 1, 3),
    ("conv3_1x1_expand", 28, 128, 512, 1, 1, 4),
    ("conv4_1x1_reduce", 14, 1024, 256, 1, 1, 5),
    ("conv4_1x1_expand", 14, 256, 1024, 1, 1, 6),
    ("conv5_1x1_reduce", 7, 2048, 512, 1, 1, 2),
    ("conv5_1x1_expand", 7, 512, 2048, 1, 1, 3),
]
_RESNET50_OTHER_LAYERS = [  # the stem, each stage's first reduce and its strided projection
    ("conv1_7x7_s2", 224, 3, 64, 7, 2, 1),
    ("conv2_1x1_reduce_first", 56, 64, 64, 1, 1, 1),
    ("conv3_1x1_reduce_first", 56, 256, 128, 1, 1, 1),
    ("conv3_1x1_proj_s2", 56, 256, 512, 1, 2, 1),
    ("conv4_1x1_reduce_first", 28, 512, 256, 1, 1, 1),
    ("conv4_1x1_proj_s2", 28, 512, 1024, 1, 2, 1),
    ("conv5_1x1_reduce_first", 14, 1024, 512, 1, 1, 1),
    ("conv5_1x1_proj_s2", 14, 1024, 2048, 1, 2, 1),
]
assert sum(layer[-1] for layer in _RESNET50_LAYERS + _RESNET50_OTHER_LAYERS) == 53
# ResNet-50 v1 (`keras.applications.ResNet50`, `scripts/pruned_resnet50.py`) strides each stage's first
# 1x1 reduce instead of its 3x3; its other shapes are v1.5's (the strided 3x3 runs as the stride-1 one)
_RESNET50_V1_LAYERS = [
    ("v1_conv3_1x1_reduce_first_s2", 56, 256, 128, 1, 2, 1),
    ("v1_conv4_1x1_reduce_first_s2", 28, 512, 256, 1, 2, 1),
    ("v1_conv5_1x1_reduce_first_s2", 14, 1024, 512, 1, 2, 1),
]


def _resnet50_problem(layer: tuple, batch: int, density: float, suffix: str = "", **kw) -> Problem:
    """One row of the ResNet-50 tables as a problem (`kw`: sweep, value, count)."""
    name, hw, cin, cout, k, s, _ = layer
    return Problem(f"resnet50_{name}_b{batch}{suffix}", (batch, hw, hw, cin), (k, k, cin, cout), density,
                   strides=s, **kw)


def _resnet50(batch: int, kernel: int) -> list[Problem]:
    return [
        _resnet50_problem(layer, batch, 0.1, sweep=f"resnet50_{kernel}x{kernel}_b{batch}", value=i)
        for i, layer in enumerate(_RESNET50_LAYERS)
        if layer[4] == kernel
    ]


def _resnet50_network(batch: int, sparsity: int, block: int = 1) -> list[Problem]:
    """Every convolution shape of ResNet-50 with its count, pruned to `sparsity` percent zeros.
    At 90% the names (and so the kernels and tuning records) are those of the per-stage sweeps.
    `block` > 1: every kernel pruned in blocks of that many output channels (names end `_g<block>`)."""
    suffix = ("" if sparsity == 90 else f"_s{sparsity}") + (f"_g{block}" if block > 1 else "")
    return [
        _resnet50_problem(layer, batch, round(1 - sparsity / 100, 6), suffix,
                          sweep=network_sweep(batch, sparsity, block), value=i, count=layer[-1], block=block)
        for i, layer in enumerate(_RESNET50_LAYERS + _RESNET50_OTHER_LAYERS)
    ]


def network_sweep(batch: int, sparsity: int, block: int = 1) -> str:
    """The name of the whole-ResNet-50 set at `batch` and `sparsity` percent zeros (`block`: pruned
    in blocks of that many output channels)."""
    return f"resnet50_network_s{sparsity}_b{batch}" + (f"_g{block}" if block > 1 else "")


SWEEPS: dict[str, list[Problem]] = _sweeps()
RESNET50: dict[str, list[Problem]] = {
    f"resnet50_{k}x{k}_b{b}": _resnet50(b, k) for k in (3, 1) for b in (1, 32)
}
#: whole networks: every convolution shape with its count (`tvm_sparseconv.network_time` adds them up)
NETWORKS: dict[str, list[Problem]] = {
    network_sweep(b, s): _resnet50_network(b, s) for s in (90, 95) for b in (1, 32)
} | {  # pruned as the TF32 tensor cores can use it (union-tf32: a group's union is its block's taps)
    network_sweep(b, 90, GROUP_BLOCK): _resnet50_network(b, 90, GROUP_BLOCK) for b in (1, 32)
}
#: v1's strided reduce layers (the rest of v1 is in the sets above)
RESNET50_V1 = {f"resnet50_v1_b{b}": [_resnet50_problem(layer, b, 0.1, sweep=f"resnet50_v1_b{b}", value=i)
                                     for i, layer in enumerate(_RESNET50_V1_LAYERS)] for b in (1, 32)}
TINY = [
    Problem("tiny_same", (1, 16, 24, 4), (3, 3, 4, 8), 0.3, sweep="tiny", value=0),
    Problem("tiny_stride", (2, 15, 13, 3), (5, 4, 3, 6), 0.2, strides=(3, 2), padding="VALID", sweep="tiny", value=1),
]

WORKLOAD_SETS: dict[str, list[Problem]] = {
    "headline": [HEADLINE],
    **SWEEPS,
    "sweeps": [p for ps in SWEEPS.values() for p in ps],
    **RESNET50,
    "resnet50": [p for ps in RESNET50.values() for p in ps],
    **RESNET50_V1,
    **NETWORKS,
    "resnet50_network": [p for ps in NETWORKS.values() for p in ps],
    "tiny": TINY,
}


def workload_set(name: str) -> list[Problem]:
    """The problems of a named set (see `WORKLOAD_SETS`) or one problem by its name (e.g.
    `resnet50_conv3_1x1_proj_s2_b32`); a comma-separated list joins several."""
    by_name = {p.name: p for ps in WORKLOAD_SETS.values() for p in ps}
    out: list[Problem] = []
    for part in name.split(","):
        if part in WORKLOAD_SETS:
            problems = WORKLOAD_SETS[part]
        elif part in by_name:
            problems = [by_name[part]]
        else:
            raise KeyError(f"unknown workload set or problem {part!r}; sets: {', '.join(WORKLOAD_SETS)}")
        out += [p for p in problems if p not in out]
    return out
