// Runs generated CUDA C on the host, to check it without a GPU: every thread of a block is a
// std::thread (so __syncthreads is a real barrier and each thread has its own registers), the
// blocks of a launch run one after another (so __shared__ can be a function static), a warp's
// shuffles go through per-warp slots between two warp barriers. Float arithmetic is the host's
// IEEE arithmetic (compiled with -ffp-contract=off, as the _rn intrinsics never contract); the
// math functions (expf, logf, tanhf, powf, ...) are the host's libm, not CUDA's.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

static std::barrier<>* nc_block_barrier;
static std::barrier<>* nc_warp_barrier[32];
static unsigned long long nc_slots[32][32];
static std::atomic<int> nc_or_flag;

inline void __syncthreads() { nc_block_barrier->arrive_and_wait(); }
inline int __syncthreads_or(int v) {
  __syncthreads();
  if (v) nc_or_flag.store(1);
  __syncthreads();
  int r = nc_or_flag.load();
  __syncthreads();
  if (threadIdx.x == 0) nc_or_flag.store(0);
  __syncthreads();
  return r;
}
template <class T> inline T __shfl_down_sync(unsigned, T v, int offset) {
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  nc_slots[warp][lane] = bits;
  nc_warp_barrier[warp]->arrive_and_wait();
  T r = v;
  if (lane + offset < 32) std::memcpy(&r, &nc_slots[warp][lane + offset], sizeof(T));
  nc_warp_barrier[warp]->arrive_and_wait();
  return r;
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
inline long long __double_as_longlong(double f) { long long i; std::memcpy(&i, &f, 8); return i; }
inline double __ll2double_rn(long long i) { return (double)i; }
inline double __ull2double_rn(unsigned long long i) { return (double)i; }
inline float __uint2float_rn(unsigned i) { return (float)i; }
inline float __double2float_rn(double d) { return (float)d; }
using std::signbit;

// run `kernel(args)` as a launch of `grid` blocks of `block` threads
extern "C" void nc_emulate(void (*kernel)(void**), void** args, int grid, int block) {
  blockDim.x = block;
  gridDim.x = grid;
  std::barrier<> bar(block);
  nc_block_barrier = &bar;
  std::vector<std::barrier<>*> warps;
  for (int w = 0; w < (block + 31) / 32; ++w) warps.push_back(nc_warp_barrier[w] = new std::barrier<>(32));
  for (int b = 0; b < grid; ++b) {
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t)
      threads.emplace_back([=] { blockIdx.x = b; threadIdx.x = t; kernel(args); });
    for (auto& th : threads) th.join();
  }
  for (auto* w : warps) delete w;
}
