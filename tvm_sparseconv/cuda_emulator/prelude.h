// Runs TVM's generated CUDA C on the CPU: each thread of a block is a fiber (ucontext) of one OS
// thread, blocks run one after another. Force-included before the kernel source (g++ -include).
//
// What it checks: the kernels' index arithmetic, bounds, barriers' placement in the control flow,
// and the host's sequence of launches, on real data. What it does not: timing, memory-model races
// beyond the orders it tries (threads run between barriers in forward or reverse order, alternating),
// warp-level primitives and inline PTX (sources with `asm` are declined in Python before compiling).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <cstdio>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// Block-shared memory: one static per declaration, shared by the block's fibers; blocks run one at a
// time. EMU_SHARED (placed after each declaration by the Python side) fills it with NaN bytes once
// per block, as a block's shared memory starts undefined.
#define __shared__ static
#define EMU_SHARED(name)                                   \
  do {                                                     \
    static long emu_filled_##name = -1;                    \
    if (emu_filled_##name != emu::block_serial) {          \
      emu_filled_##name = emu::block_serial;               \
      std::memset((void*)(name), 0xff, sizeof(name));      \
    }                                                      \
  } while (0)

struct dim3 { unsigned x = 1, y = 1, z = 1; };
dim3 threadIdx, blockIdx, blockDim, gridDim;

template <typename T> struct emu_v1 { T x; };
template <typename T> struct alignas(sizeof(T) * 2) emu_v2 { T x, y; };
template <typename T> struct emu_v3 { T x, y, z; };
template <typename T> struct alignas(sizeof(T) * 4) emu_v4 { T x, y, z, w; };
using float1 = emu_v1<float>; using float2 = emu_v2<float>; using float3 = emu_v3<float>; using float4 = emu_v4<float>;
using int1 = emu_v1<int>; using int2 = emu_v2<int>; using int3 = emu_v3<int>; using int4 = emu_v4<int>;
using uint1 = emu_v1<unsigned>; using uint2 = emu_v2<unsigned>; using uint4 = emu_v4<unsigned>;
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float3 make_float3(float a, float b, float c) { return {a, b, c}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int2 make_int2(int a, int b) { return {a, b}; }
inline int3 make_int3(int a, int b, int c) { return {a, b, c}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

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
long block_serial = 0;                // which block runs (EMU_SHARED)
unsigned char* dyn_shared = nullptr;  // dynamic shared memory of the running launch
size_t dyn_shared_bytes = 0;

struct Fiber {
  ucontext_t ctx;
  char* stack;
  bool done;
};
constexpr size_t STACK_BYTES = 1 << 20;
ucontext_t scheduler;
Fiber* fibers = nullptr;
int n_fibers = 0, current = 0, live = 0, arrived = 0;
unsigned long barrier_generation = 0;
void (*kernel_call)(void*) = nullptr;
void* kernel_closure = nullptr;

inline void release_if_all_arrived() {
  if (arrived > 0 && arrived == live) { ++barrier_generation; arrived = 0; }
}

void fiber_entry() {
  kernel_call(kernel_closure);
  fibers[current].done = true;
  --live;
  release_if_all_arrived();  // threads that have exited no longer hold the others at a barrier
  swapcontext(&fibers[current].ctx, &scheduler);
}

// One launch: every block in turn; within a block the threads run as fibers in rounds (between two
// barriers), in forward order on even rounds and in reverse on odd ones when `alternate`.
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, size_t dyn_bytes, bool alternate, F&& body) {
  std::fprintf(stderr, "emu: launch %s grid (%u,%u,%u) block (%u,%u,%u)\n", name, grid.x, grid.y, grid.z,
               block.x, block.y, block.z);
  gridDim = grid;
  blockDim = block;
  n_fibers = int(block.x * block.y * block.z);
  Fiber* fs = new Fiber[n_fibers];
  for (int i = 0; i < n_fibers; ++i) fs[i].stack = static_cast<char*>(std::malloc(STACK_BYTES));
  fibers = fs;
  std::vector<unsigned char> dyn(dyn_bytes + 64);
  dyn_shared = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(dyn.data()) + 63) & ~uintptr_t(63));
  dyn_shared_bytes = dyn_bytes;
  kernel_closure = &body;
  kernel_call = [](void* c) { (*static_cast<F*>(c))(); };
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        ++block_serial;
        std::memset(dyn_shared, 0xff, dyn_bytes);
        for (int i = 0; i < n_fibers; ++i) {
          getcontext(&fs[i].ctx);
          fs[i].ctx.uc_stack.ss_sp = fs[i].stack;
          fs[i].ctx.uc_stack.ss_size = STACK_BYTES;
          fs[i].ctx.uc_link = nullptr;
          makecontext(&fs[i].ctx, fiber_entry, 0);
          fs[i].done = false;
        }
        live = n_fibers;
        arrived = 0;
        for (long round = 0; live > 0; ++round) {
          bool reverse = alternate && (round & 1);
          for (int k = 0; k < n_fibers; ++k) {
            int i = reverse ? n_fibers - 1 - k : k;
            if (fs[i].done) continue;
            current = i;
            threadIdx = {unsigned(i) % block.x, (unsigned(i) / block.x) % block.y, unsigned(i) / (block.x * block.y)};
            swapcontext(&scheduler, &fs[i].ctx);
          }
        }
      }
  for (int i = 0; i < n_fibers; ++i) std::free(fs[i].stack);
  delete[] fs;
  fibers = nullptr;
}

// Host buffers: each in its own pages between two inaccessible 64 KB guards, its (64-byte padded)
// end against the upper one, so that a kernel reading or writing past an array faults instead of
// touching a neighbour.
void* guarded(size_t bytes) {
  const size_t page = 4096, guard = 16 * page;
  size_t span = (bytes + 63) / 64 * 64;
  size_t pages = (span + page - 1) / page;
  char* base = static_cast<char*>(mmap(nullptr, pages * page + 2 * guard, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) { std::perror("emu: mmap"); std::exit(3); }
  mprotect(base, guard, PROT_NONE);
  mprotect(base + guard + pages * page, guard, PROT_NONE);
  return base + guard + pages * page - span;  // 64-byte aligned
}
}  // namespace emu

void __syncthreads() {
  unsigned long generation = emu::barrier_generation;
  ++emu::arrived;
  emu::release_if_all_arrived();
  int me = emu::current;
  while (emu::barrier_generation == generation) swapcontext(&emu::fibers[me].ctx, &emu::scheduler);
}
