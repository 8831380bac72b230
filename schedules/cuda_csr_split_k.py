"""The kernel of algorithm "csr-split-k" (CUDA, 1x1 layers): sparse rows, input channels split across blocks.

Batch-1 1x1 layers are 5-10 M useful multiply-adds: spread over the chip that is a few hundred
per lane, and what a kernel's time is made of is its longest chain of dependent steps. The
scheduled 1x1 kernels walk every input chunk in turn inside one block (copy, barrier, FMAs, per
chunk: 16 rounds on conv5's 2048 channels), and register-reuse's straight-line code is fetched for
every pair of warps that runs it. Here each block takes ONE chunk of input channels:

- grid: blockIdx.x over blocks of ``rows`` output channels, blockIdx.y over chunks of ``chunk``
  input channels (the split of K), blockIdx.z over tiles of ``pixels`` output pixels (flattened
  n, oh, ow); ``threads`` threads per block;
- the block copies its pixels' chunk of the NHWC input into shared memory, channel-major
  (``xs[k][p]``: the lanes of a warp, on consecutive pixels of one channel, hit distinct banks;
  zeros outside the image, strided 1x1 layers read their output pixels' input directly);
- each thread takes (output channel, pixel column) items, pixel fastest, and walks that channel's
  nonzeros in the chunk (compressed rows: no padding): per nonzero one 8-byte load of its value and
  input channel (the lanes of a warp share a channel: a broadcast) feeds ``per_thread`` FMAs on
  pixels ``column + i * columns``, one shared load each. The kernel is bound by the L1/shared
  pipe (ncu, conv5 1x1 reduce b1, one pixel per thread and two 4-byte weight loads: L1/TEX 75% of
  peak, 17 cycles between a warp's instructions, 53% of them waiting on L1TEX), so each loaded
  weight should feed several FMAs;
- the sums go through shared memory and leave channel fastest, so that a warp's atomics (or
  stores) cover whole 128-byte rows of the NHWC output: scattered ones (a sector each) made the
  first version atomic-bound (H200, conv5 1x1 reduce b1: 25-43 us with chunks of 32, 11.4 with
  chunks of 128);
- the chunks' sums are added into the output with atomicAdd, which a first kernel sets to the bias
  (or zero); an activation is a third kernel. With one chunk the sums are stored directly.
- or (tiles ending in C, `Tile.reduce == "cluster"`, 2 to `MAX_CLUSTER` chunks): the chunks of a
  (channel block, pixel tile) are one thread-block cluster (cluster dims (1, chunks, 1), launched by
  TVM's runtime from the ``clusterCtaIdx.y`` binding). After a cluster barrier, block y adds up the
  y-th slice of the sums over every block's shared memory (``mapa`` + ``ld.shared::cluster``, ranks
  in order: deterministic), applies bias and activation and stores the output; a second barrier
  keeps each block's shared memory alive until the others have read it. One kernel, no atomics.

Measured (`benchmarks/experiments/csr_split_k.md`): about 6 us + 0.6 us per million useful FMAs
on ResNet-50's batch-1 1x1 layers; the fixed part keeps it behind cuDNN TF32 on most of them. It is
not the first kernel and the atomics: the cluster tiles, without either, ran within -1.0 / +1.3 us
of the atomic ones (v5).

The weight arrays (`pack`): ``ptr`` (Cout x (ceil(Cin / 16) + 1) int32: where each channel's
nonzeros of input channel 16*i onwards start) and ``weights`` (int64: the value's float32 bits
above its input channel), in channel-major compressed-row order. A chunk is a multiple of 16
channels, so one format serves every tile.
"""

# no `from __future__ import annotations`: TVMScript reads the parameters' annotations as objects

from dataclasses import asdict, dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from tvm_sparseconv.algorithms.base import activate

from .common import kernel_function

#: bump when the emitted kernel changes for the same inputs (part of the compiled module's cache key)
EMITTER_VERSION = 6
#: the generated function's name
FUNCTION_NAME = "sparse_conv2d"
#: input channels per entry of the row-pointer table (a chunk is a multiple of it)
PTR_STEP = 16
#: static shared memory of a block (the copy of its pixels x chunk)
MAX_SHARED_BYTES = 48 * 1024
#: whether a block copies its channels' weights into shared memory first (`emit`'s `segment`): it
#: lost to the global-memory loop on the same tiles (H200, 4 b1 1x1 layers, 24-30 tiles each: median
#: 1.08-1.10x slower, `benchmarks/experiments/csr_split_k.md`), so it is off; kept for experiments
SHARED_WEIGHTS = False
#: and then only where its channels' longest run in a chunk is at most this long (the loop over
#: them is unrolled that many times)
MAX_UNROLLED_SEGMENT = 128
#: threads of the bias/zero and activation kernels
_FLAT_THREADS = 256
#: the most blocks of a cluster (CUDA's portable limit): a cluster tile's chunks
MAX_CLUSTER = 8
#: v8: a thread's items (channel, pixel column) walk their nonzeros side by side, one weight of each
#: item in flight per step and the next step's loaded ahead; the row pointers and the first weights
#: are loaded before the staged copy's barrier (their round trips overlap the copy's). Only where a
#: thread has at most `MAX_INTERLEAVED` items (each holds `per_thread` sums in registers). It lost
#: (H200, 3 b1 1x1 layers x 2 tiles: 0.7-2.5 us slower than v6, `benchmarks/experiments/csr_split_k.md`,
#: stop 37), so it is off (the emitted code is then v6's); kept for experiments and tested
PIPELINED = False
MAX_INTERLEAVED = 8
#: v9 (with `PIPELINED`): weights each item loads per step, all items' in flight together (the
#: first step's before the barrier); 0 is v8 (one per item per step, the next step's loaded ahead).
#: v6's loop gets nvcc's own 4-way unroll (4 loads in flight) but pays the row pointers' and the
#: weights' round trips one item after the other (SASS of v6 under ncu, stop 37)
LOADS_PER_ITEM = 0
#: experiments only (`benchmarks/experiments/csr_split_k_ablation.py`): parts of the kernel left out
#: to time the rest ("staging": the input copy's loads, "nonzeros": the walk over the weights,
#: "output": the stores/atomics, "init": the bias/zero kernel); the results are then wrong
ABLATE: frozenset = frozenset()


@dataclass(frozen=True)
class Tile:
    """One point of the design space."""

    pixels: int = 49  # output pixels per block (flattened n, oh, ow)
    per_thread: int = 2  # pixels per thread (columns apart): FMAs per loaded weight
    rows: int = 16  # output channels per block
    chunk: int = 128  # input channels per block (the split of K), a multiple of PTR_STEP
    threads: int = 256
    reduce: str = "atomic"  # how the chunks' sums meet: "atomic" (atomicAdd) or "cluster" (distributed shared memory)

    @property
    def name(self) -> str:
        suffix = "C" if self.reduce == "cluster" else ""
        return f"p{self.pixels}q{self.per_thread}r{self.rows}k{self.chunk}t{self.threads}{suffix}"

    @property
    def columns(self) -> int:
        """Thread columns per channel (each takes `per_thread` pixels, `columns` apart)."""
        return -(-self.pixels // self.per_thread)

    def as_dict(self) -> dict:
        return asdict(self)


def shared_bytes(tile: Tile) -> int:
    """The block's copy of its input chunk (pixels padded to whole columns) and its sums."""
    return (tile.columns * tile.per_thread * tile.chunk + tile.pixels * (tile.rows + 1)) * 4


def _grid() -> dict[str, Tile]:
    tiles = [Tile(p, q, r, k, 256, reduce) for p in (16, 32, 49, 64, 98, 196) for q in (1, 2, 4) for r in (16, 32, 64)
             for k in (64, 128, 256) for reduce in ("atomic", "cluster")]
    # chunks of 512 channels: 2048-channel layers in clusters of 4
    tiles += [Tile(16, q, r, 512, 256, "cluster") for q in (1, 2, 4) for r in (16, 32, 64)]
    return {t.name: t for t in tiles if shared_bytes(t) <= MAX_SHARED_BYTES}


def chunks(cin: int, tile: Tile) -> int:
    """The blocks a (channel block, pixel tile) is split into: chunks of `tile.chunk` input channels."""
    return -(-cin // tile.chunk)


def reduces_in_cluster(cin: int, tile: Tile) -> bool:
    """Whether `tile` is a cluster tile usable on `cin` input channels (2 to `MAX_CLUSTER` chunks)."""
    return tile.reduce == "cluster" and 2 <= chunks(cin, tile) <= MAX_CLUSTER


#: the named tiles (what records name)
TILES: dict[str, Tile] = _grid()


def default_tile(n_pixels: int) -> str:
    """Untuned tile: a 7x7 map per block, two pixels per thread, 32 channels, chunks of 128."""
    return Tile(49 if n_pixels % 49 == 0 else 32, 2, 32, 128, 256).name


def ptr_columns(cin: int) -> int:
    """Entries per output channel of the row-pointer table."""
    return -(-cin // PTR_STEP) + 1


def pack(kernel) -> list[np.ndarray]:
    """(ptr, weights) of a 1x1 `SparseKernel` (see the module docstring); `weights` holds at
    least one element (a kernel of zeros still compiles)."""
    _, channels, values = kernel.compressed_rows()  # channel by channel, sorted by ci
    ptr = kernel.row_pointers(PTR_STEP)  # Cout x ptr_columns(Cin)
    weights = (values.view(np.uint32).astype(np.uint64) << np.uint64(32)) | channels.astype(np.uint64)
    if weights.size == 0:
        weights = np.zeros(1, np.uint64)
    return [ptr.reshape(-1), weights.view(np.int64)]


def unpack(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, channels) of `pack`'s weights."""
    bits = weights.view(np.uint64)
    return (bits >> np.uint64(32)).astype(np.uint32).view(np.float32), (bits & np.uint64(0xFFFFFFFF)).astype(np.int32)


def longest_segment(ptr: np.ndarray, cin: int, chunk: int) -> int:
    """The most nonzeros any output channel has in one chunk of `chunk` input channels (`pack`'s ptr)."""
    table = ptr.reshape(-1, ptr_columns(cin))
    bounds = np.minimum(np.arange(0, table.shape[1] - 1 + chunk // PTR_STEP, chunk // PTR_STEP), table.shape[1] - 1)
    bounds = np.unique(bounds)
    return int(np.diff(table[:, bounds], axis=1).max(initial=0))


def shared_weights_bytes(tile: Tile, segment: int) -> int:
    """Shared memory of a block that also holds its channels' weights of its chunk (`segment` each)."""
    return shared_bytes(tile) + tile.rows * (max(segment, 1) * 8 + 4)


def emit(input_shape, output_hw, strides, pads, cout: int, nnz: int, tile: Tile, bias: bool = False,
         activation: "str | None" = None, segment: "int | None" = None) -> tirx.PrimFunc:
    """The PrimFunc ``f(x, ptr, weights, [bias], out)`` for a 1x1 layer and `tile`.

    `segment` (the kernel's `longest_segment` for the tile's chunk): the block first copies its
    channels' weights of its chunk into shared memory (all loads in flight at once), and each
    thread walks them in a loop unrolled `segment` times. Without it (None) each thread loads its
    weights from global memory in a loop of data-dependent length (the default, `SHARED_WEIGHTS`:
    the copy's extra phase cost more than the loads it spared).
    """
    n, h, w, cin = input_shape
    oh_, ow_ = output_hw
    sh, sw = strides
    (pt, _), (pl, _) = pads
    npx = n * oh_ * ow_
    pix, q, rows, chunk, threads = tile.pixels, tile.per_thread, tile.rows, tile.chunk, tile.threads
    ncol = tile.columns
    wide = ncol * q  # pixel columns of the staged copy (zeros past `pix`)
    splits = chunks(cin, tile)
    cluster = tile.reduce == "cluster"
    if cluster and not reduces_in_cluster(cin, tile):
        raise ValueError(f"cluster tile {tile.name} needs 2 to {MAX_CLUSTER} chunks of input channels: "
                         f"{cin} channels make {splits}")
    cols = ptr_columns(cin)
    vec = 4 if cin % 4 == 0 else 1
    per_px = chunk // vec  # staging units per pixel
    stage_iters = -(-(wide * per_px) // threads)
    item_iters = -(-(rows * ncol) // threads)
    out_iters = -(-(rows * pix) // threads)
    nnz = max(nnz, 1)
    total = npx * cout
    flat_blocks = -(-total // _FLAT_THREADS)
    atomic = splits > 1 and not cluster
    slice_len = -(-(rows * pix) // splits)  # a cluster block's share of the block's sums
    slice_iters = -(-slice_len // threads)

    def x_at(p, c, block):
        """(inside, flat index) of the input of column p of pixel block `block`, channel c."""
        g = block * pix + p
        b, oh, ow = g // (oh_ * ow_), g // ow_ % oh_, g % ow_
        ih, iw = oh * sh - pt, ow * sw - pl
        inside = tirx.all(p < pix, g < npx, ih >= 0, ih < h, iw >= 0, iw < w, c < cin)
        return inside, ((b * h + ih) * w + iw) * cin + c

    def epilogue_expr(y, co, bias_buf):
        if bias_buf is not None:
            y = y + bias_buf[co]
        return activate(y, activation)

    def value_of(word):
        return T.reinterpret("float32", T.Cast("int32", word >> T.int64(32)))

    activated = atomic and activation is not None
    staged = segment is not None
    seg = max(segment or 1, 1)
    unknown = set(ABLATE) - {"staging", "nonzeros", "output", "init"}
    if unknown:
        raise ValueError(f"unknown parts to leave out: {sorted(unknown)}")
    pipelined = PIPELINED and not staged and item_iters <= MAX_INTERLEAVED
    per_item = LOADS_PER_ITEM
    copy_input = "staging" not in ABLATE
    walk = "nonzeros" not in ABLATE
    store = "output" not in ABLATE
    w_iters = -(-(rows * seg) // threads)
    kq = chunk // PTR_STEP
    shapes = {"x": (n, h, w, cin), "ptr": (cout * cols,), "w": (nnz,), "out": (n, oh_, ow_, cout)}

    def first(ptr, m, by):
        """Where output channel m's nonzeros of chunk `by` start in the weights."""
        return ptr[m * cols + by * kq]

    def count_of(ptr, m, by):
        """How many nonzeros output channel m has in chunk `by`."""
        return ptr[m * cols + T.min((by + 1) * kq, cols - 1)] - first(ptr, m, by)

    @T.macro
    def block_work(x_in, ptr, weights, bias_buf, out, bx, by, bz, tx):
        """One block: stage the chunk, walk the nonzeros, and store (or add, or cluster-reduce) the sums."""
        xs = T.alloc_buffer((chunk * wide,), "float32", scope="shared")
        part = T.alloc_buffer((pix * (rows + 1),), "float32", scope="shared")
        acc = T.alloc_buffer((q,), "float32", scope="local")
        word = T.alloc_buffer((1,), "int64", scope="local")
        wsh = T.alloc_buffer((rows * seg,), "int64", scope="shared")
        nsh = T.alloc_buffer((rows,), "int32", scope="shared")
        count = T.alloc_buffer((1,), "int32", scope="local")
        sums = T.alloc_buffer((1,), "float32", scope="local")
        remote = T.alloc_buffer((1,), "float32", scope="local")
        mapped = T.alloc_buffer((1,), "uint32", scope="local")
        lo_l = T.alloc_buffer((item_iters,), "int32", scope="local")  # (pipelined) each item's first nonzero
        cnt_l = T.alloc_buffer((item_iters,), "int32", scope="local")  # and how many it has in this chunk
        most = T.alloc_buffer((1,), "int32", scope="local")
        cur = T.alloc_buffer((item_iters * max(per_item, 1),), "int64", scope="local")
        nxt = T.alloc_buffer((item_iters,), "int64", scope="local")
        accs = T.alloc_buffer((item_iters * q,), "float32", scope="local")
        if pipelined:
            # the row pointers first: their round trip overlaps the copy's
            most[0] = 0
            for it in T.unroll(item_iters):
                e = T.meta_var(it * threads + tx)
                lo_l[it] = 0
                cnt_l[it] = 0
                if e < rows * ncol and bx * rows + e // ncol < cout:
                    lo_l[it] = first(ptr, bx * rows + e // ncol, by)
                    cnt_l[it] = count_of(ptr, bx * rows + e // ncol, by)
        # the chunk of the block's pixels, channel-major; pixel fastest across threads
        for it in range(stage_iters):
            e = T.meta_var(it * threads + tx)
            if e < wide * per_px:
                inside, at = T.meta_var(x_at(e % wide, by * chunk + e // wide * vec, bz))
                for i in T.vectorized(vec):
                    if copy_input:
                        xs[(e // wide * vec + i) * wide + e % wide] = T.if_then_else(inside, x_in[at + i], T.float32(0))
                    else:
                        xs[(e // wide * vec + i) * wide + e % wide] = T.float32(0)
        if pipelined:
            # each item's first weight(s), also before the barrier
            for it in T.unroll(item_iters):
                most[0] = T.max(most[0], cnt_l[it])
                if per_item == 0:
                    nxt[it] = T.int64(0)
                    if cnt_l[it] > 0:
                        nxt[it] = weights[lo_l[it]]
                else:
                    for u in T.unroll(per_item):
                        cur[it * per_item + u] = T.int64(0)
                        if u < cnt_l[it]:
                            cur[it * per_item + u] = weights[lo_l[it] + u]
        if staged:
            # the block's channels' weights of this chunk, each channel's in `seg` slots
            for it in range(w_iters):
                e = T.meta_var(it * threads + tx)
                if e < rows * seg and bx * rows + e // seg < cout:
                    if e % seg < count_of(ptr, bx * rows + e // seg, by):
                        wsh[e] = weights[first(ptr, bx * rows + e // seg, by) + e % seg]
            if tx < rows:
                nsh[tx] = 0
                if bx * rows + tx < cout:
                    nsh[tx] = count_of(ptr, bx * rows + tx, by)
        T.tvm_storage_sync("shared")
        if pipelined:
            # the items side by side: per step one nonzero of each, the next step's weights in flight
            for a in T.unroll(item_iters * q):
                accs[a] = T.float32(0)
            if walk and per_item > 0:
                # steps of `per_item` nonzeros per item: every item's loads of a step in flight together
                for js in T.serial((most[0] + per_item - 1) // per_item):
                    if js > 0:
                        for it in T.unroll(item_iters):
                            for u in T.unroll(per_item):
                                if js * per_item + u < cnt_l[it]:
                                    cur[it * per_item + u] = weights[lo_l[it] + js * per_item + u]
                    for it in T.unroll(item_iters):
                        for u in T.unroll(per_item):
                            if js * per_item + u < cnt_l[it]:
                                for i in T.unroll(q):
                                    accs[it * q + i] = accs[it * q + i] + value_of(cur[it * per_item + u]) * xs[
                                        (T.Cast("int32", cur[it * per_item + u]) - by * chunk) * wide
                                        + (it * threads + tx) % ncol + i * ncol]
            elif walk:
                for j in T.serial(most[0]):
                    for it in T.unroll(item_iters):
                        cur[it] = nxt[it]
                        if j + 1 < cnt_l[it]:
                            nxt[it] = weights[lo_l[it] + j + 1]
                    for it in T.unroll(item_iters):
                        if j < cnt_l[it]:
                            for i in T.unroll(q):
                                accs[it * q + i] = accs[it * q + i] + value_of(cur[it]) * xs[
                                    (T.Cast("int32", cur[it]) - by * chunk) * wide + (it * threads + tx) % ncol + i * ncol]
            for it in T.unroll(item_iters):
                e = T.meta_var(it * threads + tx)
                if e < rows * ncol:
                    for i in range(q):
                        if e % ncol + i * ncol < pix:
                            part[(e % ncol + i * ncol) * (rows + 1) + e // ncol] = accs[it * q + i]
        else:
            for it in range(item_iters):
                e = T.meta_var(it * threads + tx)
                r = T.meta_var(e // ncol)  # the item's channel in the block
                c = T.meta_var(e % ncol)  # and its pixel column
                if e < rows * ncol:
                    for i in range(q):
                        acc[i] = T.float32(0)
                    if staged:
                        count[0] = nsh[r]  # (a shared load cannot be a branch condition)
                        for j in T.unroll(seg):
                            if j < count[0]:
                                word[0] = wsh[r * seg + j]
                                for i in range(q):
                                    acc[i] = acc[i] + value_of(word[0]) * xs[(T.Cast("int32", word[0]) - by * chunk) * wide + c + i * ncol]
                    elif walk and bx * rows + r < cout:
                        lo = T.meta_var(first(ptr, bx * rows + r, by))
                        for j in T.serial(count_of(ptr, bx * rows + r, by)):
                            word[0] = weights[lo + j]
                            for i in range(q):
                                acc[i] = acc[i] + value_of(word[0]) * xs[(T.Cast("int32", word[0]) - by * chunk) * wide + c + i * ncol]
                    for i in range(q):
                        if c + i * ncol < pix:
                            part[(c + i * ncol) * (rows + 1) + r] = acc[i]
        T.tvm_storage_sync("shared")
        if cluster:
            # block `by` of the cluster adds up slice `by` of the sums over the blocks (ranks in order)
            T.cuda.cluster_sync()
            for it in range(slice_iters):
                e = T.meta_var(by * slice_len + it * threads + tx)
                p = T.meta_var(e // rows)
                r = T.meta_var(e % rows)
                if it * threads + tx < slice_len and e < rows * pix and bx * rows + r < cout and bz * pix + p < npx:
                    sums[0] = T.float32(0)
                    for rank in range(splits):
                        T.evaluate(T.ptx.mapa.shared__cluster.u32(
                            mapped[0], T.cuda.cvta_generic_to_shared(T.address_of(part[p * (rows + 1) + r])),
                            T.uint32(rank)))
                        T.evaluate(T.ptx.ld.shared__cluster.f32(remote[0], mapped[0]))
                        sums[0] = sums[0] + remote[0]
                    out[(bz * pix + p) * cout + bx * rows + r] = epilogue_expr(
                        sums[0], bx * rows + r, bias_buf if bias else None)
            T.cuda.cluster_sync()  # every block's shared memory stays until all have read it
        else:
            # the sums leave channel fastest: a warp's stores (or atomics) are whole rows of NHWC
            for it in range(out_iters):
                e = T.meta_var(it * threads + tx)
                p = T.meta_var(e // rows)
                r = T.meta_var(e % rows)
                if e < rows * pix and bx * rows + r < cout and bz * pix + p < npx:
                    if not store:
                        sums[0] = part[p * (rows + 1) + r]
                        if sums[0] == T.float32(1.0e30):  # never: keeps the sums alive
                            out[(bz * pix + p) * cout + bx * rows + r] = sums[0]
                    elif atomic:
                        T.evaluate(T.call_extern("float32", "atomicAdd", T.address_of(
                            out[(bz * pix + p) * cout + bx * rows + r]), part[p * (rows + 1) + r]))
                    else:
                        out[(bz * pix + p) * cout + bx * rows + r] = epilogue_expr(
                            part[p * (rows + 1) + r], bx * rows + r, bias_buf if bias else None)

    @T.prim_func(private=True)
    def body(x_nhwc: T.Buffer(shapes["x"], "float32"), ptr: T.Buffer(shapes["ptr"], "int32"),
             weights: T.Buffer(shapes["w"], "int64"),
             bias_buf: T.Buffer((cout,), "float32"), out_nhwc: T.Buffer(shapes["out"], "float32")):
        # flat views of the NHWC arrays
        x_in = T.decl_buffer((n * h * w * cin,), "float32", data=x_nhwc.data)
        out = T.decl_buffer((total,), "float32", data=out_nhwc.data)
        if atomic and "init" not in ABLATE:
            for bi in T.thread_binding(flat_blocks, thread="blockIdx.x"):
                for ti in T.thread_binding(_FLAT_THREADS, thread="threadIdx.x"):
                    if bi * _FLAT_THREADS + ti < total:
                        if bias:
                            out[bi * _FLAT_THREADS + ti] = bias_buf[(bi * _FLAT_THREADS + ti) % cout]
                        else:
                            out[bi * _FLAT_THREADS + ti] = T.float32(0)
        for bx in T.thread_binding(-(-cout // rows), thread="blockIdx.x"):
            for by in T.thread_binding(splits, thread="blockIdx.y"):
                if cluster:
                    for _rank in T.thread_binding(splits, thread="clusterCtaIdx.y"):  # == by: one cluster per y column
                        for bz in T.thread_binding(-(-npx // pix), thread="blockIdx.z"):
                            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                                block_work(x_in, ptr, weights, bias_buf, out, bx, by, bz, tx)
                else:
                    for bz in T.thread_binding(-(-npx // pix), thread="blockIdx.z"):
                        for tx in T.thread_binding(threads, thread="threadIdx.x"):
                            block_work(x_in, ptr, weights, bias_buf, out, bx, by, bz, tx)
        if activated:
            for bi in T.thread_binding(flat_blocks, thread="blockIdx.x"):
                for ti in T.thread_binding(_FLAT_THREADS, thread="threadIdx.x"):
                    if bi * _FLAT_THREADS + ti < total:
                        out[bi * _FLAT_THREADS + ti] = activate(out[bi * _FLAT_THREADS + ti], activation)

    return kernel_function(body, bias, FUNCTION_NAME)  # (x, ptr, weights, [bias], out)
