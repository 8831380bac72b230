// Runs TVM's generated CUDA C on the CPU: each thread of a block is a fiber of one OS thread, blocks
// (or, for cluster launches, the blocks of one thread-block cluster together) run one after another.
// Force-included before the kernel source (g++ -include).
//
// What it checks: the kernels' index arithmetic, bounds, barriers' placement in the control flow,
// warp shuffles, cluster barriers and distributed shared memory (TVM's mapa / ld.shared::cluster
// builtins), and the host's sequence of launches, on real data. What it does not: timing,
// memory-model races beyond the orders it tries (threads run between barriers in forward or reverse
// order, alternating), divergence inside a warp (a warp's active lanes are those not yet exited),
// votes and other inline PTX (sources with them are declined in Python before compiling).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <cstdio>
#include <csignal>
#include <sys/mman.h>
#include <unistd.h>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// Block-shared memory: each block of the running team (one block, or a cluster's blocks) has its own
// arena; a `__shared__` array (rewritten by the Python side into EMU_SHARED_ARRAY) sits at the same
// offset of every arena, assigned at its first use, and dynamic shared memory after all of them.
// An arena's arrays start as NaN bytes in every block.
#define EMU_SHARED_ARRAY(T, name, dims, align)                                                  \
  static const size_t emu_offset_##name = emu::reserve_shared(sizeof(T dims), align);          \
  T(&name) dims = *reinterpret_cast<T(*) dims>(emu::rank_shared() + emu_offset_##name)
#define EMU_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::rank_shared() + emu::STATIC_SHARED_BYTES)

struct dim3 { unsigned x = 1, y = 1, z = 1; };
dim3 threadIdx, blockIdx, blockDim, gridDim;

// vector types; a vector converts to another element type lane by lane (TVM declares a boolean
// vector as `float4 v = make_ushort4(...)` in some selects)
template <typename T> struct emu_v1 { T x; };
template <typename T> struct alignas(sizeof(T) * 2) emu_v2 {
  T x, y;
  template <typename U> operator emu_v2<U>() const { return {U(x), U(y)}; }
};
template <typename T> struct emu_v3 { T x, y, z; };
template <typename T> struct alignas(sizeof(T) * 4) emu_v4 {
  T x, y, z, w;
  template <typename U> operator emu_v4<U>() const { return {U(x), U(y), U(z), U(w)}; }
};
using float1 = emu_v1<float>; using float2 = emu_v2<float>; using float3 = emu_v3<float>; using float4 = emu_v4<float>;
using int1 = emu_v1<int>; using int2 = emu_v2<int>; using int3 = emu_v3<int>; using int4 = emu_v4<int>;
using uint1 = emu_v1<unsigned>; using uint2 = emu_v2<unsigned>; using uint4 = emu_v4<unsigned>;
using ushort2 = emu_v2<unsigned short>; using ushort4 = emu_v4<unsigned short>;
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float3 make_float3(float a, float b, float c) { return {a, b, c}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int2 make_int2(int a, int b) { return {a, b}; }
inline int3 make_int3(int a, int b, int c) { return {a, b, c}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline ushort2 make_ushort2(unsigned short a, unsigned short b) { return {a, b}; }
inline ushort4 make_ushort4(unsigned short a, unsigned short b, unsigned short c, unsigned short d) {
  return {a, b, c, d};
}

// CUDA's overloaded min/max on mixed int/float arguments
template <typename A, typename B> inline auto max(A a, B b) -> std::common_type_t<A, B> { return a < b ? b : a; }
template <typename A, typename B> inline auto min(A a, B b) -> std::common_type_t<A, B> { return b < a ? b : a; }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }


namespace emu {
long block_serial = 0;  // how many blocks (teams) have started

// The arenas of the running team's blocks: static arrays first (offsets fixed per declaration for the
// whole program), then the launch's dynamic shared memory.
constexpr size_t STATIC_SHARED_BYTES = size_t(1) << 20;
size_t static_shared_used = 0;
size_t dyn_shared_bytes = 0;
std::vector<unsigned char*> arenas;
int current_rank = 0;  // the block (of the team) of the running thread
inline unsigned char* rank_shared() { return arenas[current_rank]; }
inline void fill_shared(unsigned char* arena) {
  std::memset(arena, 0xff, static_shared_used);
  std::memset(arena + STATIC_SHARED_BYTES, 0xff, dyn_shared_bytes);
}
size_t reserve_shared(size_t bytes, size_t align) {
  size_t at = (static_shared_used + align - 1) / align * align;
  if (at + bytes > STATIC_SHARED_BYTES) {
    std::fprintf(stderr, "emu: fault: the kernels' shared arrays need more than %zu bytes\n", STATIC_SHARED_BYTES);
    std::exit(139);
  }
  for (unsigned char* a : arenas) std::memset(a + static_shared_used, 0xff, at + bytes - static_shared_used);
  static_shared_used = at + bytes;
  return at;
}

// Switching fibers: on x86-64 a few instructions (callee-saved registers and the stack pointer);
// ucontext's swapcontext, the portable fallback, makes a system call per switch (the signal mask).
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch, .-emu_switch
)");
struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
inline void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  void** slot = reinterpret_cast<void**>(top - 16);  // `ret` pops this: entry then sees rsp = 8 mod 16
  slot[0] = reinterpret_cast<void*>(entry);
  for (int r = 1; r <= 6; ++r) slot[-r] = nullptr;  // rbp, rbx, r12-r15
  c.sp = slot - 6;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
  Context ctx;
  char* stack;
  bool done;
};
constexpr size_t STACK_BYTES = 1 << 20;
Context scheduler;
Fiber* fibers = nullptr;
int n_fibers = 0, current = 0, block_threads = 1;
void (*kernel_call)(void*) = nullptr;
void* kernel_closure = nullptr;

// A barrier: the threads it waits for that have not exited (`live`), those arrived, and a generation
// that moves on when all have arrived. One per block of the team (__syncthreads) and one for the
// team (the cluster barrier).
struct Barrier {
  int live = 0, arrived = 0;
  unsigned long generation = 0;
  void release_if_all_arrived() {
    if (arrived > 0 && arrived == live) { ++generation; arrived = 0; }
  }
};
std::vector<Barrier> block_barriers;
Barrier cluster_barrier;

inline void wait_at(Barrier& b) {
  unsigned long generation = b.generation;
  ++b.arrived;
  b.release_if_all_arrived();
  int me = current;
  while (b.generation == generation) switch_to(fibers[me].ctx, scheduler);
}

// Warp shuffles: each lane leaves its value in its warp's slots and waits until every lane of the
// mask that has not exited has done so; then all read the published values.
struct Warp {
  unsigned long generation = 0;
  unsigned arrived = 0;  // lanes arrived, as a mask
  unsigned mask = 0;     // the lanes the shuffle waits for
  uint64_t slot[32] = {}, published[32] = {};
  bool gathering = false;  // a collective that publishes several words per lane (`warp_gather`)
  unsigned char blob[32][64] = {}, blob_published[32][64] = {};
};
std::vector<Warp> warps;
unsigned live_lanes(int w);

inline void release_warp_if_all_arrived(int w) {
  if (w >= int(warps.size())) return;
  Warp& wp = warps[w];
  unsigned waiting_for = wp.mask & live_lanes(w);
  if (wp.arrived != 0 && (wp.arrived & waiting_for) == waiting_for) {
    std::memcpy(wp.published, wp.slot, sizeof wp.slot);
    if (wp.gathering) std::memcpy(wp.blob_published, wp.blob, sizeof wp.blob);
    wp.gathering = false;
    ++wp.generation;
    wp.arrived = 0;
  }
}

unsigned live_lanes(int w) {
  unsigned m = 0;
  for (int l = 0; l < 32 && w * 32 + l < n_fibers; ++l)
    if (!fibers[w * 32 + l].done) m |= 1u << l;
  return m;
}

void fiber_entry() {
  kernel_call(kernel_closure);
  fibers[current].done = true;
  // threads that have exited no longer hold the others at a barrier
  Barrier& block = block_barriers[current / block_threads];
  --block.live;
  block.release_if_all_arrived();
  --cluster_barrier.live;
  cluster_barrier.release_if_all_arrived();
  release_warp_if_all_arrived(current / 32);
  switch_to(fibers[current].ctx, scheduler);  // never resumed
  std::abort();
}

// Host buffers: each in its own pages between two inaccessible 64 KB guards, its (64-byte padded)
// end against the upper one, so that a kernel reading or writing past an array faults instead of
// touching a neighbour; the fault handler names the array and how far off the access was.
struct Guarded {
  const char* name;
  char* data;
  size_t bytes;
};
std::vector<Guarded> buffers;
const char* running = "";  // the launch in progress

// Asynchronous copies (cp.async): each thread's copies wait in the group it has open until it
// commits it; cp.async.wait_group N lands every committed group but the N newest, oldest first.
// The source is read as the copy is issued (its own guarded pages fault then), the shared
// destination written only when its group lands, so a tile read before its wait sees the NaN or
// stale words it held.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
  size_t bytes;
};
struct AsyncGroups {
  std::vector<AsyncCopy> open;
  std::vector<std::vector<AsyncCopy>> committed;
};
std::vector<AsyncGroups> async_groups;  // per fiber of the running team

inline void cp_async(void* dst, const void* src, size_t bytes, bool fill) {
  AsyncCopy c{static_cast<unsigned char*>(dst), {}, bytes};
  if (bytes > sizeof c.data) {
    std::fprintf(stderr, "emu: fault in %s: cp.async of %zu bytes\n", running, bytes);
    std::exit(139);
  }
  if (fill) std::memcpy(c.data, src, bytes);  // else the copy's zero fill
  async_groups[current].open.push_back(c);
}
inline void cp_async_commit() {
  AsyncGroups& g = async_groups[current];
  g.committed.push_back(std::move(g.open));
  g.open.clear();
}
inline void cp_async_wait(size_t pending) {
  AsyncGroups& g = async_groups[current];
  while (g.committed.size() > pending) {
    for (const AsyncCopy& c : g.committed.front()) std::memcpy(c.dst, c.data, c.bytes);
    g.committed.erase(g.committed.begin());
  }
}

char fault_stack[1 << 16];

void on_fault(int, siginfo_t* info, void*) {
  char* at = static_cast<char*>(info->si_addr);
  char msg[512];
  int len = std::snprintf(msg, sizeof msg, "emu: fault in %s at %p, not near any array\n", running, (void*)at);
  for (const Guarded& b : buffers) {
    if (at >= b.data - 65536 && at < b.data) {
      len = std::snprintf(msg, sizeof msg, "emu: fault in %s: %ld bytes before the start of %s\n", running,
                          long(b.data - at), b.name);
    } else if (at >= b.data + b.bytes && at < b.data + b.bytes + 65536) {
      len = std::snprintf(msg, sizeof msg, "emu: fault in %s: byte %ld of %s, which holds %ld\n", running,
                          long(at - b.data), b.name, long(b.bytes));
    }
  }
  if (write(2, msg, len) < 0) {}
  _exit(139);
}

void* guarded(size_t bytes, const char* name) {
  const size_t page = 4096, guard = 16 * page;
  size_t span = (bytes + 63) / 64 * 64;
  size_t pages = (span + page - 1) / page;
  char* base = static_cast<char*>(mmap(nullptr, pages * page + 2 * guard, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) { std::perror("emu: mmap"); std::exit(3); }
  mprotect(base, guard, PROT_NONE);
  mprotect(base + guard + pages * page, guard, PROT_NONE);
  char* data = base + guard + pages * page - span;  // 64-byte aligned
  buffers.push_back({name, data, bytes});
  if (buffers.size() == 1) {  // the handler runs on its own stack (a fiber's may be the one that overflowed)
    stack_t ss{};
    ss.ss_sp = fault_stack;
    ss.ss_size = sizeof fault_stack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  }
  return data;
}

inline dim3 thread_of(int i, dim3 block) {
  return {unsigned(i) % block.x, (unsigned(i) / block.x) % block.y, unsigned(i) / (block.x * block.y)};
}

// Every team of the grid in turn (a block, or the blocks of a cluster of `cluster` dims, ranked x
// fastest as %cluster_ctarank), with its arenas refilled with NaN bytes; `team[rank]` is each
// block's index.
std::vector<dim3> team;
template <typename G>
void for_each_team(dim3 grid, dim3 cluster, G&& run_team) {
  for (unsigned bz = 0; bz < grid.z; bz += cluster.z)
    for (unsigned by = 0; by < grid.y; by += cluster.y)
      for (unsigned bx = 0; bx < grid.x; bx += cluster.x) {
        int r = 0;
        for (unsigned dz = 0; dz < cluster.z; ++dz)
          for (unsigned dy = 0; dy < cluster.y; ++dy)
            for (unsigned dx = 0; dx < cluster.x; ++dx) team[r++] = {bx + dx, by + dy, bz + dz};
        ++block_serial;
        for (unsigned char* a : arenas) fill_shared(a);
        run_team();
      }
}

// One launch: every team (block or cluster) in turn; within a team the threads run as fibers in
// rounds (up to a barrier), in forward order on even rounds and in reverse on odd ones when
// `alternate`. A kernel without barriers or shuffles runs its threads one after the other as plain
// calls (`barriers` false), in reverse order in every other block when `alternate`.
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, dim3 cluster, size_t dyn_bytes, bool barriers, bool alternate,
            F&& body) {
  running = name;
  std::fprintf(stderr, "emu: launch %s grid (%u,%u,%u) block (%u,%u,%u) cluster (%u,%u,%u)\n", name, grid.x, grid.y,
               grid.z, block.x, block.y, block.z, cluster.x, cluster.y, cluster.z);
  gridDim = grid;
  blockDim = block;
  block_threads = int(block.x * block.y * block.z);
  int ranks = int(cluster.x * cluster.y * cluster.z);
  n_fibers = block_threads * ranks;
  team.assign(ranks, dim3{});
  dyn_shared_bytes = dyn_bytes;
  std::vector<std::vector<unsigned char>> memory(ranks);
  arenas.clear();
  for (auto& m : memory) {
    m.resize(STATIC_SHARED_BYTES + dyn_bytes + 64);
    arenas.push_back(reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(m.data()) + 63) & ~uintptr_t(63)));
  }
  current_rank = 0;
  if (!barriers) {
    for_each_team(grid, cluster, [&] {
      for (int r = 0; r < ranks; ++r) {
        blockIdx = team[r];
        current_rank = r;
        for (int k = 0; k < block_threads; ++k) {
          threadIdx = thread_of(alternate && (block_serial & 1) ? block_threads - 1 - k : k, block);
          body();
        }
      }
    });
    arenas.clear();
    return;
  }
  Fiber* fs = new Fiber[n_fibers];
  for (int i = 0; i < n_fibers; ++i) fs[i].stack = static_cast<char*>(std::malloc(STACK_BYTES));
  fibers = fs;
  kernel_closure = &body;
  kernel_call = [](void* c) { (*static_cast<F*>(c))(); };
  for_each_team(grid, cluster, [&] {
    for (int i = 0; i < n_fibers; ++i) {
      start_context(fs[i].ctx, fs[i].stack, STACK_BYTES, fiber_entry);
      fs[i].done = false;
    }
    block_barriers.assign(ranks, Barrier{block_threads, 0, 0});
    async_groups.assign(n_fibers, AsyncGroups{});
    cluster_barrier = Barrier{n_fibers, 0, 0};
    warps.assign((n_fibers + 31) / 32, Warp{});
    for (long round = 0; cluster_barrier.live > 0; ++round) {
      bool reverse = alternate && (round & 1);
      for (int k = 0; k < n_fibers; ++k) {
        int i = reverse ? n_fibers - 1 - k : k;
        if (fs[i].done) continue;
        current = i;
        current_rank = i / block_threads;
        blockIdx = team[current_rank];
        threadIdx = thread_of(i % block_threads, block);
        switch_to(scheduler, fs[i].ctx);
      }
    }
  });
  for (int i = 0; i < n_fibers; ++i) std::free(fs[i].stack);
  delete[] fs;
  fibers = nullptr;
  arenas.clear();
}

}  // namespace emu

void __syncthreads() { emu::wait_at(emu::block_barriers[emu::current_rank]); }

// Thread-block clusters (TVM's builtins, whose PTX the Python side removes): a shared address is
// the block's rank in the cluster above the offset in its arena.
constexpr unsigned EMU_RANK_SHIFT = 24;
inline unsigned tvm_builtin_cuda_cvta_generic_to_shared(void* p) {
  auto* at = static_cast<unsigned char*>(p);
  for (size_t r = 0; r < emu::arenas.size(); ++r)
    if (at >= emu::arenas[r] && at < emu::arenas[r] + emu::STATIC_SHARED_BYTES + emu::dyn_shared_bytes)
      return unsigned(r) << EMU_RANK_SHIFT | unsigned(at - emu::arenas[r]);
  std::fprintf(stderr, "emu: fault in %s: cvta to shared of an address outside shared memory\n", emu::running);
  std::exit(139);
}
inline unsigned __cvta_generic_to_shared(void* p) { return tvm_builtin_cuda_cvta_generic_to_shared(p); }
inline void tvm_builtin_cuda_cluster_sync() { emu::wait_at(emu::cluster_barrier); }
inline void tvm_builtin_ptx_mapa_u32_shared__cluster_u32(uint32_t& d, uint32_t a, uint32_t rank) {
  d = rank << EMU_RANK_SHIFT | (a & ((1u << EMU_RANK_SHIFT) - 1));
}
inline void tvm_builtin_ptx_ld_shared__cluster_f32(float& d, uint32_t addr) {
  size_t rank = addr >> EMU_RANK_SHIFT, offset = addr & ((1u << EMU_RANK_SHIFT) - 1);
  if (rank >= emu::arenas.size() || offset + sizeof(float) > emu::STATIC_SHARED_BYTES + emu::dyn_shared_bytes) {
    std::fprintf(stderr, "emu: fault in %s: ld.shared::cluster of rank %zu offset %zu in a cluster of %zu\n",
                 emu::running, rank, offset, emu::arenas.size());
    std::exit(139);
  }
  std::memcpy(&d, emu::arenas[rank] + offset, sizeof(float));
}
inline unsigned tvm_builtin_cluster_ctaid_x() { return blockIdx.x - emu::team[0].x; }
inline unsigned tvm_builtin_cluster_ctaid_y() { return blockIdx.y - emu::team[0].y; }
inline unsigned tvm_builtin_cluster_ctaid_z() { return blockIdx.z - emu::team[0].z; }

namespace emu {
// One value per lane of the calling thread's warp through the exchange: the value of lane
// `source(lane)` (a lane outside the warp's segment of `width` keeps its own value).
template <typename T, typename F>
T warp_exchange(unsigned mask, T value, F source) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  int me = current, w = me / 32, lane = me % 32;
  Warp& wp = warps[w];
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  wp.slot[lane] = bits;
  if (wp.arrived == 0) wp.mask = mask;
  wp.arrived |= 1u << lane;
  unsigned long generation = wp.generation;
  release_warp_if_all_arrived(w);
  while (warps[w].generation == generation) switch_to(fibers[me].ctx, scheduler);
  int src = source(lane);
  T out = value;
  if (src >= 0 && src < 32 && (mask >> src & 1u)) std::memcpy(&out, &warps[w].published[src], sizeof(T));
  return out;
}

// Every lane's `bytes` (at most 64) of the calling thread's warp, once every live lane of `mask`
// has left its own: row l of the result is lane l's.
inline const unsigned char (*warp_gather(unsigned mask, const void* mine, size_t bytes))[64] {
  int me = current, w = me / 32, lane = me % 32;
  Warp& wp = warps[w];
  std::memcpy(wp.blob[lane], mine, bytes);
  wp.gathering = true;
  if (wp.arrived == 0) wp.mask = mask;
  wp.arrived |= 1u << lane;
  unsigned long generation = wp.generation;
  release_warp_if_all_arrived(w);
  while (warps[w].generation == generation) switch_to(fibers[me].ctx, scheduler);
  return warps[w].blob_published;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (the Python side rewrites TVM's inline PTX into
// this call): D = A B + C over the warp's fragments in PTX's layout (group = lane / 4, t = lane % 4:
// a0..a3 hold A[group][t], A[group+8][t], A[group][t+4], A[group+8][t+4]; b0, b1 hold B[t][group],
// B[t+4][group]; c0..c3 hold C[group][2t], C[group][2t+1], C[group+8][2t], C[group+8][2t+1]). The
// tensor cores read 19 bits of each operand (the low 13 of the mantissa are dropped); sums in fp32.
inline float tf32_operand(uint32_t bits) {
  bits &= 0xFFFFE000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void mma_m16n8k8_tf32(float& d0, float& d1, float& d2, float& d3, uint32_t a0, uint32_t a1, uint32_t a2,
                             uint32_t a3, uint32_t b0, uint32_t b1, float c0, float c1, float c2, float c3) {
  uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
  const unsigned char(*all)[64] = warp_gather(0xffffffffu, mine, sizeof mine);
  auto word = [&](int lane, int reg) {
    uint32_t v;
    std::memcpy(&v, all[lane] + 4 * reg, 4);
    return v;
  };
  int lane = current % 32, group = lane / 4, t = lane % 4;
  float c[4] = {c0, c1, c2, c3};
  float* d[4] = {&d0, &d1, &d2, &d3};
  for (int i = 0; i < 4; ++i) {
    int row = group + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 8; ++k) {
      float a = tf32_operand(word(row % 8 * 4 + k % 4, (row >= 8) + 2 * (k >= 4)));
      float b = tf32_operand(word(col * 4 + k % 4, 4 + (k >= 4)));
      acc = std::fma(a, b, acc);
    }
    *d[i] = acc;
  }
}
}  // namespace emu

inline unsigned __activemask() { return emu::live_lanes(emu::current / 32); }
template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) { return lane / width * width + (src % width + width) % width; });
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) {
    return int(lane % width + delta) < width ? lane + int(delta) : lane; });
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) { return lane % width >= int(delta) ? lane - int(delta) : lane; });
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) {
    int src = lane ^ lane_mask;
    return src / width == lane / width ? src : lane; });
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_exchange(mask, 0, [](int lane) { return lane; }); }
