"""The TF32 tensor-core instruction `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32` as a TVM tensor intrinsic.

A warp holds each operand spread over its 32 lanes ("warp" scope buffers of shape (32, regs)); the
fragment layouts below are PTX ISA 9.7.14.5.9 (m16n8k8, .tf32), with g = lane // 4, t = lane % 4:
A (16 x 8): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B (8 x 8, k x n): b0 (t, g),
b1 (t+4, g); C (16 x 8): c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
The schedule lays its fragment buffers out with the same maps (`sch.transform_layout`), so that
`tensorize` matches the description and each lane's loads are plain per-thread loads.
"""

from __future__ import annotations

from tvm.runtime import convert
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

M, N, K = 16, 8, 8
WARP = 32
A_REGS, B_REGS, C_REGS = M * K // WARP, K * N // WARP, M * N // WARP  # 4, 2, 4
MMA_TF32 = "sparseconv_mma_tf32_m16n8k8"


def a_layout(i, k):
    """(row, col) of A -> (lane, register)."""
    return (i % 8) * 4 + k % 4, (k // 4) * 2 + i // 8


def b_layout(k, j):
    """(k, n) of B -> (lane, register)."""
    return j * 4 + k % 4, k // 4


def c_layout(i, j):
    """(row, col) of C -> (lane, register)."""
    return (i % 8) * 4 + j // 2, (i // 8) * 2 + j % 2


@T.prim_func(s_tir=True)
def _mma_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (WARP, A_REGS), "float32", align=64, offset_factor=1, scope="warp")
    B = T.match_buffer(b, (WARP, B_REGS), "float32", align=64, offset_factor=1, scope="warp")
    C = T.match_buffer(c, (WARP, C_REGS), "float32", align=64, offset_factor=1, scope="warp")
    with T.sblock("root"):
        T.reads(C[0:WARP, 0:C_REGS], A[0:WARP, 0:A_REGS], B[0:WARP, 0:B_REGS])
        T.writes(C[0:WARP, 0:C_REGS])
        for i, j, k in T.grid(M, N, K):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                lane_c, reg_c = T.meta_var(c_layout(vi, vj))
                lane_a, reg_a = T.meta_var(a_layout(vi, vk))
                lane_b, reg_b = T.meta_var(b_layout(vk, vj))
                T.reads(C[lane_c, reg_c], A[lane_a, reg_a], B[lane_b, reg_b])
                T.writes(C[lane_c, reg_c])
                C[lane_c, reg_c] = C[lane_c, reg_c] + A[lane_a, reg_a] * B[lane_b, reg_b]


@T.prim_func(s_tir=True)
def _mma_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (WARP, A_REGS), "float32", align=64, offset_factor=1, scope="warp")
    B = T.match_buffer(b, (WARP, B_REGS), "float32", align=64, offset_factor=1, scope="warp")
    C = T.match_buffer(c, (WARP, C_REGS), "float32", align=64, offset_factor=1, scope="warp")
    with T.sblock("root"):
        T.reads(C[0:WARP, 0:C_REGS], A[0:WARP, 0:A_REGS], B[0:WARP, 0:B_REGS])
        T.writes(C[0:WARP, 0:C_REGS])
        for tx in T.thread_binding(0, WARP, "threadIdx.x"):
            T.evaluate(
                T.ptx_legacy.mma(
                    "m16n8k8", "row", "col", "tf32", "tf32", "fp32",
                    A.data, A.elem_offset + tx * convert(A_REGS),
                    B.data, B.elem_offset + tx * convert(B_REGS),
                    C.data, C.elem_offset + tx * convert(C_REGS),
                    False,
                    dtype="float32",
                )
            )


TensorIntrin.register(MMA_TF32, _mma_desc, _mma_impl, override=True)
