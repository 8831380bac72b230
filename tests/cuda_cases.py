"""Layers that every CUDA schedule must compute: shared by the GPU tests and the emulated ones."""

import numpy as np

CASES = [  # (input NHWC, kernel HWIO, density, strides, padding, dilations, bias, activation)
    ((1, 16, 40, 3), (3, 3, 3, 8), 0.3, 1, "SAME", 1, False, None),
    ((2, 15, 13, 5), (5, 4, 5, 6), 0.2, (3, 2), "VALID", 1, True, "relu"),
    ((1, 21, 33, 4), (3, 3, 4, 16), 0.5, 1, [(2, 1), (0, 3)], 2, True, "relu6"),
    ((3, 7, 7, 32), (1, 1, 32, 24), 0.1, 1, "SAME", 1, False, None),
    ((1, 64, 128, 8), (11, 11, 8, 16), 0.1, 4, "SAME", 1, False, None),
    ((1, 8, 8, 4), (3, 3, 4, 4), 0.0, 1, "SAME", 1, True, "relu"),  # all-zero kernel
    ((4, 7, 7, 300), (3, 3, 300, 20), 0.05, 1, "SAME", 1, False, None),  # batch, several chunks, partial chunk
    ((2, 14, 14, 96), (1, 1, 96, 40), 0.1, 2, "SAME", 1, True, None),  # strided 1x1
    ((2, 15, 13, 20), (1, 1, 20, 12), 0.3, (3, 2), [(1, 2), (2, 1)], 1, True, "relu"),  # padded strided 1x1
    ((1, 9, 30, 6), (3, 5, 6, 12), 0.3, (1, 3), "SAME", (2, 1), False, "relu"),
    ((2, 9, 8, 12), (3, 3, 12, 24), 0.3, (2, 1), [(1, 2), (0, 1)], (1, 2), True, "relu6"),  # union-tf32 tiles
    ((2, 8, 8, 150), (1, 1, 150, 24), 0.2, 1, "SAME", 1, True, "relu"),  # union-tf32: 3 chunks, 1 partial
    ((4, 7, 9, 70), (1, 1, 70, 16), 0.3, 2, [(1, 0), (0, 1)], 1, False, None),  # union-tf32: padded strided 1x1
]


#: where csr-split-k's blocks take their weights from (`use_csr_weight_path`)
CSR_WEIGHT_PATHS = ["shared", "global", "global-pipelined", "global-batched"]

CSR_SPLIT_K_CASES = [  # 1x1 layers x csr-split-k tiles: (input, kernel, strides, padding, bias, activation, tile)
    ((1, 7, 7, 200), (1, 1, 200, 72), 1, "SAME", True, "relu", "p49q2r16k64t256"),  # 4 chunks, the last short
    ((1, 7, 7, 200), (1, 1, 200, 72), 1, "SAME", True, None, "p32q4r32k64t256"),  # pixel and channel tails
    ((1, 7, 7, 64), (1, 1, 64, 40), 1, "SAME", False, "relu6", "p49q1r16k64t256"),  # one chunk: direct stores
    ((2, 9, 10, 200), (1, 1, 200, 40), 2, "SAME", True, "relu", "p16q2r16k64t256"),  # strided, batch 2
    ((1, 8, 8, 30), (1, 1, 30, 24), 1, [[0, 0], [1, 0], [0, 1], [0, 0]], False, None, "p16q4r16k64t256"),  # padded, Cin 30
    # cluster tiles (the chunks add up in distributed shared memory)
    ((1, 7, 7, 200), (1, 1, 200, 72), 1, "SAME", True, "relu", "p49q2r16k64t256C"),  # cluster of 4, last chunk short
    ((1, 7, 7, 200), (1, 1, 200, 72), 1, "SAME", True, None, "p32q4r32k64t256C"),  # pixel and channel tails
    ((2, 9, 10, 200), (1, 1, 200, 40), 2, "SAME", True, "relu6", "p16q2r16k128t256C"),  # strided, batch 2, 2 chunks
    ((1, 8, 8, 98), (1, 1, 98, 24), 1, [[0, 0], [1, 0], [0, 1], [0, 0]], False, None, "p16q4r16k64t256C"),  # padded
    ((1, 4, 4, 512), (1, 1, 512, 64), 1, "SAME", False, None, "p16q1r64k64t256C"),  # a cluster of 8
]


FUZZ_CASES = [  # shapes where a thread's share of a tile's pixels can be split many ways
    ((2, 14, 14, 64), (1, 1, 64, 48), 0.1, 1, "SAME", 1),
    ((1, 14, 14, 32), (3, 3, 32, 40), 0.2, 2, "SAME", 1),
    ((4, 14, 14, 48), (1, 1, 48, 32), 0.2, 2, "VALID", 1),  # nhwc-direct's strided view
    ((16, 7, 7, 32), (3, 3, 32, 40), 0.2, 1, "SAME", 1),  # whole 16-pixel tiles, 5 groups (union-tf32)
    ((4, 8, 8, 64), (1, 1, 64, 48), 0.1, 2, "SAME", 1),
]
FUZZ_SEEDS = 8


def sparse_kernel(rng, shape, density):
    """A random float32 HWIO kernel with `density` nonzeros and (past 4 channels) an empty output channel."""
    w = rng.standard_normal(shape).astype(np.float32)
    w = np.where(rng.random(shape) < density, w, 0.0).astype(np.float32)
    if shape[3] > 4:
        w[..., 1] = 0.0  # an output channel without a single nonzero
    return w


def sampled_candidates(wl, target, rng, seeds: int):
    """Random draws from `wl`'s CUDA design spaces (what tuning measures), `seeds` per design,
    each through MetaSchedule's postprocessors (the ones they reject are left out)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvm_sparseconv import tuning_records
    from tvm_sparseconv.tuning import design_space

    mod = tuning_records.workload_module(wl)
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=design_space(target, algorithm=wl.algorithm),
                         task_name="main", num_threads=1)
    for design in ctx.generate_design_space():
        for seed in range(1, seeds + 1):
            sch = tvm.s_tir.Schedule(mod, seed=int(rng.integers(1 << 30)) + seed)
            tvm.s_tir.Trace(design.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if all(p.apply(sch) for p in ctx.space_generator.postprocs):
                yield sch


def use_csr_weight_path(monkeypatch, path: str) -> None:
    """csr-split-k's emitter switches for one of `CSR_WEIGHT_PATHS`: weights staged in shared
    memory, or read from global memory (the default), also with v8's pipelined walk
    (`PIPELINED`) and v9's 4 loads per item per step (`LOADS_PER_ITEM`)."""
    from tvm_sparseconv.schedules import cuda_csr_split_k

    monkeypatch.setattr(cuda_csr_split_k, "SHARED_WEIGHTS", path == "shared")
    monkeypatch.setattr(cuda_csr_split_k, "PIPELINED", path in ("global-pipelined", "global-batched"))
    monkeypatch.setattr(cuda_csr_split_k, "LOADS_PER_ITEM", 4 if path == "global-batched" else 0)


def replayed(trace, mod):
    """A schedule of `mod` with `trace` applied (post-processing kept, as records replay)."""
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def with_late_cache_write(trace):
    """`trace` with its first register cache_write moved to just before its ReverseComputeAt: the
    order the cuda-ell rules had before `with_cache_writes_first` (None without one)."""
    import tvm

    insts = list(trace.insts)
    cw = next((i for i in insts if i.kind.name == "CacheWrite" and str(i.attrs[-1]) == "local"), None)
    if cw is None:
        return None
    insts.remove(cw)
    insts.insert(next(n for n, i in enumerate(insts) if i.kind.name == "ReverseComputeAt"), cw)
    return tvm.s_tir.schedule.Trace(insts, {i: d for i, d in trace.decisions.items() if i in insts})
