#!/usr/bin/env python
"""CPU experiment (issue 4, the 4x target): does the headline's CPU kernel gain from a different input
layout or from splitting each channel's nonzeros by input-channel chunks? Not library code.

  python benchmarks/experiments/cpu_layouts.py --out benchmarks/experiments/cpu_layouts-cpu-znver4.json

- layout "chw" (the library's x_gather) against "hcw" (row-major: the 11-row window of a tile spans
  ~180 pages instead of ~350), both with the library's untuned CPU schedule;
- "chunked": nonzeros of each output channel split by input-channel chunk, padded per chunk, with
  the chunk loop outside the channel tiles so that a chunk's input window fits in L1.
Each variant is checked against float64 (NaN-poisoned output) and timed with time_evaluator.
"""

import argparse
import json
import time
from pathlib import Path
import numpy as np
import tvm
from tvm import te, tirx, s_tir
from tvm_sparseconv.workloads import HEADLINE
from tvm_sparseconv.targets import host_cpu_target
from tvm_sparseconv.schedules import default_rule
from tvm_sparseconv.algorithms.base import CONV
from tvm_sparseconv.algorithms.ell_gather import X_GATHER
from tvm_sparseconv import reference


def te_variant(wl, layout):
    n, h, w, cin = wl.input_shape
    cout, k = wl.out_channels, wl.ell_width
    (pt, _), (pl, _) = wl.pads
    gh, gw = wl.gather_hw
    sh, sw = wl.strides
    x = te.placeholder((n, h, w, cin), "float32", name="x")
    values = te.placeholder((cout, k), "float32", name="values")
    offsets = te.placeholder((cout, k), "int32", name="offsets")
    if layout == "chw":
        plane = gh * gw

        def dec(f):
            return f // plane, (f % plane) // gw, f % gw

        rowstride = gw
    else:  # hcw: row, then channel, then column
        rowlen = cin * gw

        def dec(f):
            return (f % rowlen) // gw, f // rowlen, f % gw

        rowstride = cin * gw

    def gather(b, f):
        c, r, col = dec(f)
        row, col = r - pt, col - pl
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        return tirx.if_then_else(inside, x[b, row, col, c], tirx.const(0.0, "float32"))

    xg = te.compute((n, cin * gh * gw), gather, name=X_GATHER)
    r = te.reduce_axis((0, k), name="k")
    conv = te.compute(
        (n, *wl.output_hw, cout),
        lambda b, oh, ow, co: te.sum(values[co, r] * xg[b, offsets[co, r] + oh * (sh * rowstride) + ow * sw], axis=r),
        name=CONV,
    )
    return [x, values, offsets, conv], rowstride


def offsets_for(wl, kern, layout):
    gh, gw = wl.gather_hw
    dh, dw = wl.dilations
    cin = wl.input_shape[3]
    if layout == "chw":
        off = kern.ci.astype(np.int64) * (gh * gw) + kern.kh * (dh * gw) + kern.kw * dw
    else:
        off = kern.kh.astype(np.int64) * (dh * cin * gw) + kern.ci * gw + kern.kw * dw
    return off.astype(np.int32)


target = host_cpu_target()
kern = HEADLINE.sparse_kernel()
wl = HEADLINE.workload(kern)
rng = np.random.default_rng(0)
x = rng.standard_normal(wl.input_shape, dtype=np.float32)
ref = reference.conv2d_f64(x, kern.to_dense(), wl)
dev = tvm.cpu()

n, h, w, cin = wl.input_shape
cout = wl.out_channels
(pt, _), (pl, _) = wl.pads
gh, gw = wl.gather_hw
sh, sw = wl.strides
plane = gh * gw


def run_layouts(results, rounds: int = 6):
    """Both layouts, timed in alternation over `rounds` rounds (this machine's noise is ~20%)."""
    runs = {}
    for layout in ["chw", "hcw"]:
        args, _ = te_variant(wl, layout)
        func = te.create_prim_func(args).with_attr("global_symbol", "main")
        sch = default_rule(target).apply(func, target, False)
        lib = tvm.compile(sch.mod, target=target)
        a = [
            tvm.runtime.tensor(x, dev),
            tvm.runtime.tensor(np.asarray(kern.values), dev),
            tvm.runtime.tensor(offsets_for(wl, kern, layout), dev),
        ]
        out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
        lib["main"](*a, out)
        err = reference.relative_error(out.numpy(), ref)
        runs[layout] = (lib.mod.time_evaluator("main", dev, number=1, repeat=3), a, out, err, [])
    for _ in range(rounds):
        for layout, (timer, a, out, err, samples) in runs.items():
            samples.append(timer(*a, out).median * 1e3)
    for layout, (_, _, _, err, samples) in runs.items():
        print(layout, f"median {np.median(samples):.1f} ms over {rounds} alternating rounds {samples}", flush=True)
        results.append({"variant": f"layout {layout}", "ms": float(np.median(samples)), "samples_ms": samples,
                        "relative_error": err})


def chunked(nch):
    cc = cin // nch
    mask = np.arange(kern.ell_width)[None, :] < kern.counts[:, None]
    chunk = kern.ci // cc
    counts = np.zeros((cout, nch), int)
    for co in range(cout):
        for j in range(nch):
            counts[co, j] = np.sum(mask[co] & (chunk[co] == j))
    W = int(-(-counts.max() // 4) * 4)
    vals = np.zeros((cout, nch, W), np.float32)
    offs = np.zeros((cout, nch, W), np.int32)
    for j in range(nch):
        offs[:, j, :] = j * cc * plane
    for co in range(cout):
        for j in range(nch):
            sel = np.nonzero(mask[co] & (chunk[co] == j))[0]
            vals[co, j, : len(sel)] = kern.values[co, sel]
            offs[co, j, : len(sel)] = kern.ci[co, sel] * plane + kern.kh[co, sel] * gw + kern.kw[co, sel]
    return vals, offs, W, counts


def build_chunked(nch, ow_t, co_t, order):
    vals, offs, W, counts = chunked(nch)
    X = te.placeholder((n, h, w, cin), "float32", name="x")
    V = te.placeholder((cout, nch, W), "float32", name="values")
    Offs = te.placeholder((cout, nch, W), "int32", name="offsets")

    def gather(b, f):
        c, r = f // plane, f % plane
        row, col = r // gw - pt, r % gw - pl
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        return tirx.if_then_else(inside, X[b, row, col, c], tirx.const(0.0, "float32"))

    xg = te.compute((n, cin * plane), gather, name="x_gather")
    j = te.reduce_axis((0, nch), name="j")
    k = te.reduce_axis((0, W), name="k")
    conv = te.compute(
        (n, *wl.output_hw, cout),
        lambda b, oh, ow, co: te.sum(V[co, j, k] * xg[b, Offs[co, j, k] + oh * (sh * gw) + ow * sw], axis=[j, k]),
        name="conv",
    )
    func = te.create_prim_func([X, V, Offs, conv]).with_attr("global_symbol", "main")
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("conv")
    b, oh, ow, co, jj, kk = sch.get_loops(blk)
    ow_o, ow_i = sch.split(ow, [None, ow_t])
    co_o, co_i = sch.split(co, [None, co_t])
    if order == "chunk_outer":
        sch.reorder(b, oh, ow_o, jj, co_o, kk, co_i, ow_i)
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, ow_o, preserve_unit_loops=True)
    else:
        sch.reorder(b, oh, ow_o, co_o, jj, kk, co_i, ow_i)
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, co_o, preserve_unit_loops=True)
    sch.transform_layout(blk, ("write", 0), lambda b_, h_, w_, c: (b_, h_, c, w_))
    sch.unroll(co_i)
    sch.vectorize(ow_i)
    sch.annotate(kk, "pragma_auto_unroll_max_step", 4)
    sch.annotate(kk, "pragma_unroll_explicit", 1)
    wb = sch.get_loops(acc)[-2:]
    sch.reorder(wb[1], wb[0])
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.parallel(sch.fuse(b, oh))
    sch.decompose_reduction(blk, jj)
    xb, xf = sch.get_loops(sch.get_sblock("x_gather"))
    sch.parallel(sch.fuse(xb, sch.split(xf, factors=[None, 1024])[0]))
    lib = tvm.compile(sch.mod, target=target)
    a = [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(vals, dev), tvm.runtime.tensor(offs, dev)]
    out = tvm.runtime.tensor(np.full(wl.output_shape, np.nan, np.float32), dev)
    lib["main"](*a, out)
    err = reference.relative_error(out.numpy(), ref)
    t = lib.mod.time_evaluator("main", dev, number=1, repeat=3)(*a, out).median
    pad = nch * W * cout / kern.nnz
    print(f"chunks {nch} W {W} (stored/nnz {pad:.2f}) ow {ow_t} co {co_t} {order}: {t * 1e3:.1f} ms err {err:.1e}")
    return {"variant": f"chunked {nch} ({order})", "ms": t * 1e3, "relative_error": err, "stored_per_nnz": pad}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    out_path = ap.parse_args().out
    results = []
    run_layouts(results)
    for spec in ["1:32:4:co_outer", "2:32:4:chunk_outer", "4:32:4:chunk_outer", "8:32:4:chunk_outer"]:
        nch, ow_t, co_t, order = spec.split(":")
        results.append(build_chunked(int(nch), int(ow_t), int(co_t), order))
    out_path.write_text(
        json.dumps(
            {
                "machine": "cpu-" + str(target.attrs["mcpu"]),
                "workload": wl.describe(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
