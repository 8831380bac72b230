"""How every scheduled sparse convolution becomes a module: `compile_tir` (TVM's pipeline, two fixes).

Algorithms whose CUDA rules keep tensor-core fragments in "warp" scope buffers (one per operand;
see `schedules/mma_tf32.py`) mark their PrimFunc with `WARP_FRAGMENTS_ATTR`. For those, TVM 0.27's
default TIR pipeline needs two changes:

- `LowerWarpMemory` rewrites only the first warp buffer of a scope per run (the others stay 32x
  too large, per-thread arrays in local memory), so it runs once per warp buffer;
- common-subexpression elimination runs before it and turns a fragment index's lane term into a
  `let` variable, which `LowerWarpMemory` then rejects ("require positive constant coefficient
  on warp index threadIdx_x"), so it is off for such functions (nvcc eliminates them anyway).

Functions marked with `ASYNC_COPY_ATTR` (union-tf32-async) build with `tirx.use_async_copy`: the
copies of their software pipelines' asynchronous stages become `cp.async`.

The union family's functions (those with warp fragments) first get two build steps, not schedule
ones, so tuning records replay unchanged: a cluster reduction's sum reads each share from its own
block of the cluster (`schedules/cuda_union_tf32.cluster_sums`), and the k steps their packed taps
mark as padding are skipped (`skip_padding_steps`). `REVISION` names this pipeline's output in
cache keys.

Functions without these attributes go through TVM's default pipeline unchanged.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.target import Target
from tvm.tirx import compilation_pipeline

PIPELINE = "sparseconv"
#: PrimFunc attribute: the number of warp-scope fragment buffers the schedule may create
WARP_FRAGMENTS_ATTR = "sparseconv_warp_fragments"
#: PrimFunc attribute: copies in the asynchronous stages of a software pipeline become `cp.async`
#: (TVM's `tirx.use_async_copy` for the function's build)
ASYNC_COPY_ATTR = "sparseconv_async_copy"
#: PrimFunc attribute: False builds a union function without skipping its padding k steps (its
#: taps must then hold no step counts: `union_tf32.skipped_steps_code`); absent or True, it skips
#: as `skip_padding_steps` decides. As an annotation of the k-step loop (0 or 1, what tuning
#: draws), the same choice per loop
SKIP_STEPS_ATTR = "sparseconv_skip_padding_steps"
#: what this pipeline makes of a scheduled function, for caches of built modules: bumped whenever
#: the same schedule builds into other code (2: union functions skip their padding k steps; 3: but
#: not in unrolled KxK k loops)
REVISION = 3


def _attr_values(mod: tvm.IRModule, key: str) -> list:
    return [f.attrs[key] for f in mod.functions.values()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and key in f.attrs]


def _union_build_steps(mod: tvm.IRModule) -> tvm.IRModule:
    from .schedules.cuda_union_tf32 import cluster_sums, skip_padding_steps  # here: the rules import this module

    def steps(f: tirx.PrimFunc) -> tirx.PrimFunc:
        if not isinstance(f, tirx.PrimFunc) or f.attrs is None or WARP_FRAGMENTS_ATTR not in f.attrs:
            return f
        f = cluster_sums(f)
        return skip_padding_steps(f) if bool(f.attrs.get(SKIP_STEPS_ATTR, True)) else f

    return tvm.IRModule({gv: steps(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)


def _sparseconv_pipeline(**kwargs):
    lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("s_tir", **kwargs)
    fragments = {"n": 0}

    @tvm.transform.module_pass(opt_level=0, name="sparseconv.Lower")
    def _lower(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fragments["n"] = max((int(v) for v in _attr_values(mod, WARP_FRAGMENTS_ATTR)), default=0)
        if fragments["n"]:
            mod = _union_build_steps(mod)
        changes = {"tirx.disable_cse_tir": True} if fragments["n"] else {}
        if any(bool(v) for v in _attr_values(mod, ASYNC_COPY_ATTR)):
            changes["tirx.use_async_copy"] = True
        if not changes:
            return lower(mod)
        ctx = tvm.transform.PassContext.current()
        config = {**ctx.config, **changes}
        with tvm.transform.PassContext(opt_level=ctx.opt_level, config=config, instruments=list(ctx.instruments),
                                       required_pass=list(ctx.required_pass), disabled_pass=list(ctx.disabled_pass)):
            return lower(mod)

    def _finalize_device():
        passes = [tirx.transform.LowerWarpMemory() for _ in range(fragments["n"])]
        return tvm.ir.transform.Sequential([*passes, finalize_device()])

    return _lower, finalize_host, _finalize_device


compilation_pipeline.register_tir_pipeline(PIPELINE, _sparseconv_pipeline)


def without_step_skipping(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every function marked to build without skipping padding k steps
    (`SKIP_STEPS_ATTR` False: the union kernels as before stop 46; their taps must hold no counts)."""
    return tvm.IRModule({gv: f.with_attr(SKIP_STEPS_ATTR, False) for gv, f in mod.functions.items()}, attrs=mod.attrs)


def compile_tir(mod: tvm.IRModule, target: Target | str) -> tvm.runtime.Executable:
    """`tvm.compile(mod, target)` through this project's TIR pipeline (see the module docstring)."""
    return tvm.compile(mod, target=target, tir_pipeline=PIPELINE)
