"""CUDA design space of "union-tf32-async": union-tf32's (`cuda_union_tf32`), its staging copy a software pipeline.

The chunk loop runs as two stages, [copy 0, mma 1], the copy's stage asynchronous: TVM double-buffers
the staged tile (each tile within half the shared memory, `union_tf32.STAGED_TILES`) and, with the
algorithm's `tir_build.ASYNC_COPY_ATTR`, lowers the copy to predicated, zero-filling 16-byte
`cp.async` (4-byte where the channels do not allow 16), committed per chunk and waited for one chunk
later: chunk c+1's copy is in flight while chunk c's mma run. The algorithm rounds the input at the
fragment, so the copy is plain. Everything else (tiles, warps, unrolls, what the tuner draws) is
union-tf32's.
"""

from __future__ import annotations

from tvm import s_tir

from tvm_sparseconv.algorithms.union_tf32 import SHARED_BYTES, STAGED_TILES

from .cuda_union_tf32 import CUDAUnionTF32


class CUDAUnionTF32Async(CUDAUnionTF32):
    """union-tf32's warps of TF32 mma tiles, each chunk's staging copy in flight during the previous chunk's mma."""

    name = "cuda-union-tf32-async"
    algorithm = "union-tf32-async"
    #: chunks whose staged tiles are held at once: the copies of the next `stages - 1` chunks are in
    #: flight while one chunk's mma run. KxK layers: 2 (their format's boxes are sized for it,
    #: `union_tf32.STAGED_TILES`); 1x1 layers may take more, each tile within 1/stages of the memory
    stages = STAGED_TILES["union-tf32-async"]
    #: tuning stays within 16 groups a block here: with more, blocks of 32 warps are drawn, and TVM
    #: 0.27 fails building their cp.async copy (`IdentifyMemCpy`: "Check failed: (eval_vec_)";
    #: conv5 1x1 reduce b32, 32 warps x 2 groups, 1040 float4s a chunk)
    tuned_group_cap = 16

    def untuned_variants(self) -> list[CUDAUnionTF32]:
        """union-tf32's, but for operands a chunk ahead (`untuned_chunk_operands`): their copies
        would be two more blocks in the chunk loop's pipeline, which stages the input copy alone."""
        return [v for v in super().untuned_variants() if not v.untuned_chunk_operands]

    def tile_budget(self) -> int:
        return SHARED_BYTES // self.stages

    def _tile_rows(self, sch, blocks, pixels, co, c, k, tunable, shares=()):
        if self.stages != STAGED_TILES[self.algorithm]:
            return None  # the format's boxes fit that many tiles only
        return super()._tile_rows(sch, blocks, pixels, co, c, k, tunable, shares)

    def overlap_staging(self, sch: s_tir.Schedule, chunks) -> None:
        """The chunk loop (`chunks`, which holds the copy and the k steps) as a `stages`-stage
        pipeline whose copy stage is asynchronous."""
        sch.annotate(chunks, "software_pipeline_stage", [0, self.stages - 1])
        sch.annotate(chunks, "software_pipeline_order", [0, 1])
        sch.annotate(chunks, "software_pipeline_async_stages", [0])
