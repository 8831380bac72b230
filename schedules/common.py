"""Helpers shared by the schedule rules: finding the blocks of a `tvm_sparseconv.algorithms` compute."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

from tvm_sparseconv.algorithms import CONV, EPILOGUE, stage_names

__all__ = ["RULE_ANNOTATION", "SparseConvBlocks", "SparseConvRule", "find_blocks", "kernel_function",
           "largest_divisor", "sblock_or_none", "with_cache_writes_first"]


@dataclass
class SparseConvBlocks:
    """The blocks of a sparse-conv PrimFunc inside a schedule."""

    x_stage: s_tir.schedule.SBlockRV | None  # the input's relayout or padding stage (`Algorithm.stage`)
    conv: s_tir.schedule.SBlockRV | None  # None only in a replayed schedule whose trace renamed it
    epilogue: s_tir.schedule.SBlockRV | None


def sblock_or_none(sch: s_tir.Schedule, name: str) -> s_tir.schedule.SBlockRV | None:
    """The block named `name`, or None when the schedule has none (any more)."""
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own error type for a missing block
        return None


def find_blocks(sch: s_tir.Schedule) -> SparseConvBlocks | None:
    """The three blocks, or None when the function is not a `tvm_sparseconv` compute."""
    conv = sblock_or_none(sch, CONV)
    xg = next((b for b in (sblock_or_none(sch, name) for name in stage_names()) if b is not None), None)
    if conv is None or xg is None:
        return None
    return SparseConvBlocks(xg, conv, sblock_or_none(sch, EPILOGUE))


RULE_ANNOTATION = "sparseconv_rule"


class SparseConvRule(ScheduleRule):
    """Base of the rules here: `apply(func, target, tunable) -> Schedule | None` as in dlight.

    Subclasses implement `schedule(sch, blocks, target, tunable)`, which works on a given schedule
    so that MetaSchedule can drive it with its own traced schedule (see `tvm_sparseconv.tuning`).
    """

    #: short name, recorded with tuning results and shown in reports
    name: str = "base"
    #: target kind the rule is written for ("llvm" or "cuda")
    target_kind: str = ""
    #: the algorithm (`tvm_sparseconv.algorithms`) whose compute the rule schedules
    algorithm: str = "ell-gather"

    def apply(self, func: tirx.PrimFunc, target, tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != self.target_kind or not isinstance(func, tirx.PrimFunc):
            return None
        return self.schedule_into(s_tir.Schedule(func), target, tunable)

    def schedule_into(self, sch: s_tir.Schedule, target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule `sch` in place (None where the rule does not apply)."""
        blocks = find_blocks(sch)
        if blocks is None or sch.get(blocks.x_stage).name_hint != self._stage_name():
            return None
        # The name travels in the trace, so a tuning record tells which rule it came from.
        sch.annotate(blocks.conv, RULE_ANNOTATION, self.name)
        return self.schedule(sch, blocks, target, tunable)

    def untuned_variants(self) -> list[SparseConvRule]:
        """The rule's untuned templates (`tunable=False`) that tuning times beside the search's best
        (`tvm_sparseconv.tuning`): this rule's own, and where a rule fixes a choice the tuner
        samples (an unroll) that it could take either way, a copy for each other way."""
        return [self]

    def design_variants(self) -> list[SparseConvRule]:
        """The rule's design spaces when tuning (`tunable=True`): this rule's own, and where a choice
        changes the blocks themselves (which one trace cannot sample), a copy for each other way."""
        return [self]

    def untuned_label(self) -> str:
        """How results name this rule's untuned template (`untuned_variants` tell theirs apart)."""
        return "untuned"

    def _stage_name(self) -> str:
        from tvm_sparseconv.algorithms import by_name

        return by_name(self.algorithm).stage

    def schedule(self, sch: s_tir.Schedule, blocks: SparseConvBlocks, target, tunable: bool):
        raise NotImplementedError

    def attach_epilogue(self, sch: s_tir.Schedule, blocks: SparseConvBlocks) -> None:
        """Compute the epilogue (bias, activation) where the accumulators are stored: called by
        `schedule`, and after replaying a record that was tuned without one."""
        sch.reverse_compute_inline(blocks.epilogue)


def kernel_function(body: tirx.PrimFunc, bias: bool, name: str = "sparse_conv2d") -> tirx.PrimFunc:
    """A TVMScript emitter's PrimFunc as the op calls it: its parameter named ``bias_buf`` dropped
    where the layer has no bias (it is then never read), exported as `name`, buffers not aliased."""
    if not bias:
        params = [p for p in body.params if p.name != "bias_buf"]
        body = tirx.PrimFunc(params, body.body, body.ret_type, body.attrs)
    return body.with_attr({"global_symbol": name, "tirx.noalias": True})


def largest_divisor(n: int, candidates: list[int]) -> int:
    """The largest of `candidates` that divides `n` (1 if none does)."""
    for c in sorted(candidates, reverse=True):
        if n % c == 0:
            return c
    return 1


#: trace instructions that only transform loops (or sample their factors or annotate): a cache_write
#: may move before them without changing what they do
_LOOP_ONLY = frozenset({"GetLoops", "Split", "Fuse", "Reorder", "Bind", "Annotate", "Unroll", "Vectorize",
                        "Parallel", "SampleCategorical", "SamplePerfectTile"})


def with_cache_writes_first(trace: s_tir.schedule.Trace) -> s_tir.schedule.Trace | None:
    """`trace` with each `cache_write` moved back over the loop transformations before it (to just
    after the instruction that made its block), or None where none moves.

    Why: TVM sizes a cache_write's write-back block by the producer's loops as they are, ignoring
    their predicates. After a split that does not divide (49 pixels over 64 threads) the write-back
    then covers the padded range and stores past the output (found by the CUDA emulator: 10 rows of
    a 7-row map, the excess beyond the end of the tensor; on a GPU that overwrites whatever lies
    there, and the GPU tests, which read only the output, pass). A cache_write made before the
    loops are split has the exact domain, and reverse_compute_at then predicates the write-back.
    The producer's loops are the same either way, so a record keeps its tuned schedule.
    """
    insts = list(trace.insts)
    moved = False
    for inst in list(insts):
        # register accumulators only (a "warp" fragment's layout is the tensor-core rules' own)
        if inst.kind.name != "CacheWrite" or str(inst.attrs[-1]) != "local":
            continue
        at = insts.index(inst)
        to = at
        while to > 0 and insts[to - 1].kind.name in _LOOP_ONLY:
            to -= 1
        if to < at:
            insts.insert(to, insts.pop(at))
            moved = True
    return s_tir.schedule.Trace(insts, dict(trace.decisions)) if moved else None
