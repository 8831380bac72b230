#!/usr/bin/env python
"""Design check (no GPU, numpy only): what could an opt-in TF32 tensor-core "union GEMM" reach? Not library code.

  python benchmarks/experiments/tf32_union_bound.py --json benchmarks/experiments/tf32_union_bound-resnet50.json

The design: output channels are split into groups of G; each group is a dense implicit GEMM
(pixels x K_union) @ (K_union x G) on mma.sync m16n8k8 tf32, K_union = the union of the nonzero
taps (kh, kw, ci) of the group's channels, zero-filled where a channel lacks a tap.

Per layer of the ResNet-50 network sets (the pruned kernels exactly as the benchmarks draw them),
for each G: the mean over groups of K_union / (KH*KW*Cin), K_union rounded up to a multiple of
--k-round (mma k = 8), with channels in their natural order and after a greedy reordering.

Two best-case times in TF32 mode, from the measured H200 times (read, not measured here):
  t_best  = t_cudnn_tf32 * union                  (the union GEMM at exactly cuDNN TF32's efficiency)
  t_lds   = union * dense_MACs / (peak_MACs/s * min(1, G/32))
            (A fragment 16x8 fp32 = 512 B from shared memory at 128 B/clock per SM, reused over G/8
            n-tiles, against 1024 TF32 MACs/clock per SM of tensor cores; the B operand and every
            other cost are ignored, so it is optimistic)
  t_floor = max(bytes / --hbm-tbps, --min-kernel-us)
            (the input read and the output written once from/to HBM, and a kernel's least
            back-to-back time: they bind where the union is small, as for block-pruned kernels)
  t_tight = max(t_best, t_lds, t_floor)
each minimised over G and the two orders per layer, and capped at t_cudnn_tf32 (an opt-in would
fall back to cuDNN where the union GEMM does not help). The network adds count x time per layer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tvm_sparseconv.workload import output_size
from tvm_sparseconv.workloads import workload_set

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "nvidia-h200-resnet50-network.json"
DEFAULT_JSON = HERE / "tf32_union_bound-resnet50.json"
SETS = ("resnet50_network_s90_b32", "resnet50_network_s95_b32")
ORDERS = ("natural", "reordered")


def tap_mask(kernel: np.ndarray) -> np.ndarray:
    """HWIO kernel -> (Cout, KH*KW*Cin) boolean: which taps of each output channel are nonzero."""
    kh, kw, ci, co = kernel.shape
    return (kernel.reshape(kh * kw * ci, co) != 0).T.copy()


def greedy_order(mask: np.ndarray, g: int) -> np.ndarray:
    """A channel order whose consecutive groups of `g` share many taps.

    Each group: seed with the remaining channel of most nonzeros, then add, g-1 times, the remaining
    channel that adds the fewest new taps to the group's union. new[c] = |taps(c) minus union| is
    kept up to date by subtracting, for the taps a step adds to the union, their column counts
    (O(Cout x |union|) per group)."""
    cout, _ = mask.shape
    col = mask.T.astype(np.float32)  # (taps, Cout): rows are taps, so gathering added taps is contiguous
    nnz = mask.sum(1).astype(np.float32)
    remaining = np.ones(cout, dtype=bool)
    order = []
    for _ in range(cout // g):
        union = np.zeros(mask.shape[1], dtype=bool)
        new = nnz.copy()
        new[~remaining] = np.inf
        seed = int(np.argmax(np.where(remaining, nnz, -1)))
        pick = seed
        for step in range(g):
            if step:
                pick = int(np.argmin(new))
            order.append(pick)
            remaining[pick] = False
            new[pick] = np.inf
            added = mask[pick] & ~union
            union |= added
            if step < g - 1:
                new -= col[added].sum(0)
    rest = np.flatnonzero(remaining)  # Cout not a multiple of g: the tail group in natural order
    out = np.concatenate([np.array(order, dtype=np.int64), rest])
    assert np.array_equal(np.sort(out), np.arange(cout)), "not a permutation"
    return out


def union_fraction(mask: np.ndarray, order: np.ndarray, g: int, k_round: int) -> float:
    """Mean over groups of ceil(|union|, k_round) / taps."""
    taps = mask.shape[1]
    m = mask[order]
    sizes = [int(m[i:i + g].any(0).sum()) for i in range(0, m.shape[0], g)]
    rounded = [-(-s // k_round) * k_round for s in sizes]
    return float(np.mean(rounded) / taps)


def _shape_key(input_shape, kernel_shape, strides) -> tuple:
    return tuple(input_shape), tuple(kernel_shape), tuple(strides) if not isinstance(strides, int) else (strides, strides)


def io_bytes(p) -> int:
    """fp32 bytes of the layer's input and output, each moved once (a strided 1x1 layer reads only
    the input pixels it uses: whole channel rows, so whole sectors)."""
    n, h, w, ci = p.input_shape
    kh, kw, _, co = p.kernel_shape
    sh, sw = (p.strides, p.strides) if isinstance(p.strides, int) else p.strides
    dh, dw = (p.dilations, p.dilations) if isinstance(p.dilations, int) else p.dilations
    pixels = n * output_size(h, kh, sh, dh, p.padding) * output_size(w, kw, sw, dw, p.padding)
    return 4 * (min(n * h * w, pixels * kh * kw) * ci + pixels * co)


def dense_macs(p) -> int:
    n, h, w, ci = p.input_shape
    kh, kw, _, co = p.kernel_shape
    sh, sw = (p.strides, p.strides) if isinstance(p.strides, int) else p.strides
    dh, dw = (p.dilations, p.dilations) if isinstance(p.dilations, int) else p.dilations
    oh = output_size(h, kh, sh, dh, p.padding)
    ow = output_size(w, kw, sw, dw, p.padding)
    return n * oh * ow * kh * kw * ci * co


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated network workload sets (default: %(default)s)")
    ap.add_argument("--groups", type=int, nargs="+", default=[8, 16, 32], help="group sizes G (default: 8 16 32)")
    ap.add_argument("--k-round", type=int, default=8, help="round K_union up to a multiple of this (mma k; default 8)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="measured times (default: the H200 network JSON)")
    ap.add_argument("--peak-tflops", type=float, default=494.0, help="dense TF32 tensor-core peak, TFLOP/s (default 494: H100/H200 SXM)")
    ap.add_argument("--smem-bytes-per-clock", type=int, default=128, help="shared-memory bytes per clock per SM (default 128)")
    ap.add_argument("--tc-macs-per-clock", type=int, default=1024, help="TF32 MACs per clock per SM (default 1024)")
    ap.add_argument("--hbm-tbps", type=float, default=4.0,
                    help="bytes/s (TB/s) at which the input is read and the output written (default 4.0: H200 HBM3e)")
    ap.add_argument("--min-kernel-us", type=float, default=2.0,
                    help="least time of one kernel run back to back, us (default 2.0)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="output JSON (default: %(default)s)")
    args = ap.parse_args()

    results = json.loads(args.results.read_text())
    measured = {(p["sweep"], p["problem"]): p for p in results["points"]}
    # cuDNN's times depend on the shape alone: a set measured under other names (the block-pruned
    # ones) borrows them from a point of the same shape (its sparse fp32 time is then unknown)
    by_shape = {}
    for q in results["points"]:
        if isinstance(q.get("seconds", {}).get("cudnn_tf32"), float):
            by_shape.setdefault(_shape_key(q["input_shape"], q["kernel_shape"], q["strides"]), q)
    peak_macs = args.peak_tflops * 1e12 / 2
    # one m16n8k8: 16*8*8 = 1024 MACs; its A fragment 16x8 fp32 = 512 B, reused across G/8 n-tiles
    mma_macs, a_bytes = 16 * 8 * 8, 16 * 8 * 4
    lds_clocks = a_bytes / args.smem_bytes_per_clock
    mma_clocks = mma_macs / args.tc_macs_per_clock
    tc_frac = {g: min(1.0, (g / 8) * mma_clocks / lds_clocks) for g in args.groups}

    t0 = time.perf_counter()
    out_sets = {}
    cache: dict = {}
    for set_name in args.sets.split(","):
        layers = []
        tot = dict(cudnn_tf32=0.0, cudnn_fp32=0.0, sparse_fp32=0.0, best=0.0, lds_only=0.0, tight=0.0,
                   best_uncapped=0.0, tight_uncapped=0.0, best_natural=0.0, tight_natural=0.0)
        macw = {g: {o: 0.0 for o in ORDERS} for g in args.groups}
        mac_total = 0.0
        for p in workload_set(set_name):
            key = (p.kernel_shape, p.density, p.seed, p.block)
            if key not in cache:
                mask = tap_mask(p.dense_kernel())
                fr = {}
                for g in args.groups:
                    fr[g] = {
                        "natural": union_fraction(mask, np.arange(mask.shape[0]), g, args.k_round),
                        "reordered": union_fraction(mask, greedy_order(mask, g), g, args.k_round),
                    }
                cache[key] = (float(mask.mean()), fr)
            nnz_fraction, fr = cache[key]
            pt = measured.get((set_name, p.name)) or by_shape.get(_shape_key(p.input_shape, p.kernel_shape, p.strides))
            if pt is None:
                raise SystemExit(f"{p.name} ({set_name}) nor its shape in {args.results}")
            s = pt["seconds"]
            t_tf32, t_fp32 = s["cudnn_tf32"], s["cudnn_fp32"]
            t_sparse = s["sparse"] if pt["problem"] == p.name else None
            macs = dense_macs(p)
            assert 2 * macs == pt["dense_flops"], (p.name, macs, pt["dense_flops"])
            t_dense_peak = macs / peak_macs
            t_floor = max(io_bytes(p) / (args.hbm_tbps * 1e12), args.min_kernel_us * 1e-6)
            cands = []
            for g in args.groups:
                for o in ORDERS:
                    u = fr[g][o]
                    t_best = t_tf32 * u
                    t_lds = u * t_dense_peak / tc_frac[g]
                    cands.append(dict(G=g, order=o, union=u, t_best=t_best, t_lds=t_lds,
                                      t_tight=max(t_best, t_lds, t_floor)))
            b = min(cands, key=lambda c: c["t_best"])
            t_ = min(cands, key=lambda c: c["t_tight"])
            lds_min = min(c["t_lds"] for c in cands)
            nat = [c for c in cands if c["order"] == "natural"]
            b_nat = min(nat, key=lambda c: c["t_best"])
            t_nat = min(nat, key=lambda c: c["t_tight"])
            c = p.count
            tot["cudnn_tf32"] += c * t_tf32
            tot["cudnn_fp32"] += c * t_fp32
            tot["sparse_fp32"] = None if t_sparse is None or tot["sparse_fp32"] is None else tot["sparse_fp32"] + c * t_sparse
            tot["best_uncapped"] += c * b["t_best"]
            tot["tight_uncapped"] += c * t_["t_tight"]
            tot["best"] += c * min(t_tf32, b["t_best"])
            tot["tight"] += c * min(t_tf32, t_["t_tight"])
            tot["lds_only"] += c * lds_min
            tot["best_natural"] += c * min(t_tf32, b_nat["t_best"])
            tot["tight_natural"] += c * min(t_tf32, t_nat["t_tight"])
            for g in args.groups:
                for o in ORDERS:
                    macw[g][o] += c * macs * fr[g][o]
            mac_total += c * macs
            layers.append(dict(
                problem=p.name, count=c, input_shape=list(p.input_shape), kernel_shape=list(p.kernel_shape),
                strides=p.strides, dense_macs=macs, nnz_fraction=nnz_fraction,
                union={str(g): {**fr[g], "random_expectation": 1 - (1 - nnz_fraction) ** g} for g in args.groups},
                seconds=dict(cudnn_tf32=t_tf32, cudnn_fp32=t_fp32, sparse_fp32=t_sparse),
                cudnn_tf32_fraction_of_peak=t_dense_peak / t_tf32,
                dense_at_peak_s=t_dense_peak,
                best=dict(G=b["G"], order=b["order"], union=b["union"], t_s=b["t_best"], speedup_vs_cudnn_tf32=t_tf32 / b["t_best"]),
                tight=dict(G=t_["G"], order=t_["order"], union=t_["union"], t_best_s=t_["t_best"], t_lds_s=t_["t_lds"],
                           t_s=t_["t_tight"], bound_by=max((t_["t_lds"], "lds"), (t_["t_best"], "cudnn_efficiency"),
                                                           (t_floor, "memory_or_launch"))[1],
                           speedup_vs_cudnn_tf32=t_tf32 / t_["t_tight"]),
                t_lds_min_s=lds_min,
                t_lds_min_over_cudnn_tf32=lds_min / t_tf32,
            ))
        out_sets[set_name] = dict(
            layers=layers,
            network=dict(
                convolutions=sum(l["count"] for l in layers),
                seconds=tot,
                speedup_vs_cudnn_tf32=dict(
                    best=tot["cudnn_tf32"] / tot["best"], tight=tot["cudnn_tf32"] / tot["tight"],
                    best_uncapped=tot["cudnn_tf32"] / tot["best_uncapped"],
                    tight_uncapped=tot["cudnn_tf32"] / tot["tight_uncapped"],
                    best_natural_order_only=tot["cudnn_tf32"] / tot["best_natural"],
                    tight_natural_order_only=tot["cudnn_tf32"] / tot["tight_natural"],
                ),
                union_mac_weighted={str(g): {o: macw[g][o] / mac_total for o in ORDERS} for g in args.groups},
                union_range={str(g): {o: [min(l["union"][str(g)][o] for l in layers), max(l["union"][str(g)][o] for l in layers)]
                                      for o in ORDERS} for g in args.groups},
            ),
        )
    elapsed = time.perf_counter() - t0

    doc = dict(
        question="Best-case TF32 tensor-core union-GEMM time (groups of G output channels, K = union of their taps) "
                 "against dense cuDNN TF32, on the benchmark's pruned ResNet-50 kernels",
        machine_independent=True,
        times_source=dict(file=str(args.results.relative_to(ROOT)) if args.results.is_relative_to(ROOT) else str(args.results),
                          device=results.get("device"), date=results.get("date"),
                          note="all seconds are read from this file (medians measured on that device), none measured here"),
        method=dict(
            union="mean over groups of ceil(|union of the group's nonzero taps|, k_round) / (KH*KW*Cin)",
            k_round=args.k_round,
            k_round_note=f"K_union is rounded up to a multiple of {args.k_round} per group (mma.sync m16n8k8 k=8)",
            orders=dict(natural="channels 0..G-1, G..2G-1, ...",
                        reordered="greedy: seed each group with the remaining channel of most nonzeros, then add the "
                                  "remaining channel adding the fewest new taps, until G"),
            t_best="t_cudnn_tf32 * union (the union GEMM at exactly cuDNN TF32's efficiency)",
            t_lds="union * dense_MACs / (peak_MACs_per_s * tc_fraction(G)); A operand from shared memory, 4-byte loads",
            t_floor="max((input + output bytes) / hbm_tbps, min_kernel_us)",
            t_tight="max(t_best, t_lds, t_floor)",
            hbm_tbps=args.hbm_tbps, min_kernel_us=args.min_kernel_us,
            per_layer="each estimate minimised over G and order; network totals cap each layer at t_cudnn_tf32 "
                      "(fallback to cuDNN), *_uncapped do not; *_natural: minimised over G with the natural order only",
            peak_tflops=args.peak_tflops, peak_macs_per_s=peak_macs,
            smem_bytes_per_clock_per_sm=args.smem_bytes_per_clock, tc_tf32_macs_per_clock_per_sm=args.tc_macs_per_clock,
            tc_fraction=dict(formula="min(1, (G/8) * (1024 MACs / tc MACs per clock) / (512 B / smem B per clock)) = min(1, G/32)",
                             **{str(g): f for g, f in tc_frac.items()}),
            ignored="the B operand (weights), the gather's address arithmetic, epilogue, occupancy: the bounds are optimistic",
            dense_macs="output pixels x KH*KW*Cin x Cout (checked: 2 x dense_macs == the JSON's dense_flops)",
        ),
        groups=args.groups,
        sets=out_sets,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")

    gs = args.groups
    for set_name, sd in out_sets.items():
        print(f"\n{set_name} (times: {doc['times_source']['file']}, {doc['times_source']['device']}, {doc['times_source']['date']})")
        hdr = f"{'layer':<30}{'cnt':>4}{'nnz':>6} " + "".join(f"{'u'+str(g)+' n/r':>12}" for g in gs)
        hdr += f"{'tf32 us':>9}{'%peak':>6}{'best us':>9}{'G,o':>6}{'x':>6}{'tight us':>9}{'G,o':>6}{'x':>6}"
        print(hdr)
        for l in sd["layers"]:
            name = l["problem"].removeprefix("resnet50_")
            row = f"{name:<30}{l['count']:>4}{l['nnz_fraction']:>6.3f} "
            row += "".join(f"{l['union'][str(g)]['natural']:>6.3f}{l['union'][str(g)]['reordered']:>6.3f}" for g in gs)
            b, t = l["best"], l["tight"]
            row += f"{l['seconds']['cudnn_tf32']*1e6:>9.1f}{100*l['cudnn_tf32_fraction_of_peak']:>6.0f}"
            row += f"{b['t_s']*1e6:>9.1f}{str(b['G'])+b['order'][0]:>6}{b['speedup_vs_cudnn_tf32']:>6.2f}"
            row += f"{t['t_s']*1e6:>9.1f}{str(t['G'])+t['order'][0]:>6}{t['speedup_vs_cudnn_tf32']:>6.2f}"
            print(row)
        n = sd["network"]
        sec, sp = n["seconds"], n["speedup_vs_cudnn_tf32"]
        print(f"network ({n['convolutions']} convs): cudnn_tf32 {sec['cudnn_tf32']*1e3:.3f} ms, cudnn_fp32 "
              f"{sec['cudnn_fp32']*1e3:.3f} ms, our sparse fp32 "
              + ("not measured" if sec["sparse_fp32"] is None else f"{sec['sparse_fp32']*1e3:.3f} ms"))
        print(f"  union-GEMM best (cuDNN efficiency) {sec['best']*1e3:.3f} ms = {sp['best']:.2f}x cuDNN TF32; "
              f"tight (+smem bound) {sec['tight']*1e3:.3f} ms = {sp['tight']:.2f}x; smem bound alone {sec['lds_only']*1e3:.3f} ms")
        print(f"  natural order only: best {sec['best_natural']*1e3:.3f} ms = {sp['best_natural_order_only']:.2f}x; "
              f"tight {sec['tight_natural']*1e3:.3f} ms = {sp['tight_natural_order_only']:.2f}x")
        print("  MAC-weighted union natural/reordered: " + ", ".join(
            f"G={g} {n['union_mac_weighted'][str(g)]['natural']:.3f}/{n['union_mac_weighted'][str(g)]['reordered']:.3f}" for g in gs))
        print("  per-layer union range natural | reordered: " + ", ".join(
            f"G={g} {n['union_range'][str(g)]['natural'][0]:.3f}-{n['union_range'][str(g)]['natural'][1]:.3f} | "
            f"{n['union_range'][str(g)]['reordered'][0]:.3f}-{n['union_range'][str(g)]['reordered'][1]:.3f}" for g in gs))
    print(f"\ntc fraction (smem bound) per G: " + ", ".join(f"G={g} {f:.2f}" for g, f in tc_frac.items())
          + f"; computed in {elapsed:.1f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
