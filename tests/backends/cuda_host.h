// Runs generated CUDA C on the host, to check it without a GPU. The threads of a block are
// cooperative fibers (ucontext) on one host thread, each with its own stack and registers; a
// thread runs until it waits at __syncthreads (until every live thread of the block waits there)
// or at a warp shuffle (until every lane of its warp does), so barriers and shuffles mean what
// they mean on the device. The blocks of a launch run one after another (so __shared__ is a
// function static). Float arithmetic is the host's IEEE arithmetic (compiled with
// -ffp-contract=off, as the _rn intrinsics never contract); the math functions (expf, logf,
// tanhf, powf, ...) are the host's libm, not CUDA's. The WMMA fragment API (nvcuda::wmma) is
// emulated with each thread holding a whole fragment: a load, store or mma computes the whole tile
// in every lane (the same values the warp computes together), with TF32 and bf16 rounding as the
// device's conversions round.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <ucontext.h>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// CUDA's vector types (the ones 16-byte vector loads use) and their make_ functions
#define NC_VECTOR(T, N, A, ...) \
  struct alignas(A) N { T __VA_ARGS__; };
NC_VECTOR(float, float4, 16, x, y, z, w)
NC_VECTOR(int, int4, 16, x, y, z, w)
NC_VECTOR(unsigned char, uchar4, 4, x, y, z, w)
NC_VECTOR(double, double2, 16, x, y)
NC_VECTOR(long long, longlong2, 16, x, y)
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline longlong2 make_longlong2(long long x, long long y) { return {x, y}; }

enum { NC_RUN, NC_BLOCK, NC_WARP, NC_DONE };
static const int NC_MAX = 1024;
static const size_t NC_STACK = 64 * 1024;
static ucontext_t nc_sched, nc_ctx[NC_MAX];
static char* nc_stacks[NC_MAX];
static int nc_state[NC_MAX];
static int nc_current;
static void (*nc_kernel)(void**);
static void** nc_args;
static unsigned long long nc_slots[NC_MAX];
static int nc_or_flag;

static void nc_wait(int kind) {
  nc_state[nc_current] = kind;
  swapcontext(&nc_ctx[nc_current], &nc_sched);
}
inline void __syncthreads() { nc_wait(NC_BLOCK); }
inline int __syncthreads_or(int v) {
  if (v) nc_or_flag = 1;
  __syncthreads();
  int r = nc_or_flag;
  __syncthreads();
  if (threadIdx.x == 0) nc_or_flag = 0;
  __syncthreads();
  return r;
}
template <class T> inline T __shfl_down_sync(unsigned, T v, int offset) {
  unsigned lane = threadIdx.x & 31, base = threadIdx.x - lane;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  nc_slots[threadIdx.x] = bits;
  nc_wait(NC_WARP);
  T r = v;
  if (lane + offset < 32) std::memcpy(&r, &nc_slots[base + lane + offset], sizeof(T));
  nc_wait(NC_WARP);  // every lane has read before the slots are written again
  return r;
}

inline void __syncwarp(unsigned = 0xffffffffu) { nc_wait(NC_WARP); }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
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

static void nc_fiber() {
  nc_kernel(nc_args);
  nc_state[nc_current] = NC_DONE;
  swapcontext(&nc_ctx[nc_current], &nc_sched);
}

static void nc_resume(int t) {
  nc_current = t;
  threadIdx.x = t;
  nc_state[t] = NC_RUN;
  swapcontext(&nc_sched, &nc_ctx[t]);
}

// run `kernel(args)` as a launch of `grid` blocks of `block` threads (block a multiple of 32)
extern "C" void nc_emulate(void (*kernel)(void**), void** args, int grid, int block) {
  blockDim.x = block;
  gridDim.x = grid;
  nc_kernel = kernel;
  nc_args = args;
  for (int b = 0; b < grid; ++b) {
    blockIdx.x = b;
    for (int t = 0; t < block; ++t) {
      if (!nc_stacks[t]) nc_stacks[t] = (char*)std::malloc(NC_STACK);
      getcontext(&nc_ctx[t]);
      nc_ctx[t].uc_stack.ss_sp = nc_stacks[t];
      nc_ctx[t].uc_stack.ss_size = NC_STACK;
      nc_ctx[t].uc_link = nullptr;
      makecontext(&nc_ctx[t], nc_fiber, 0);
      nc_resume(t);  // runs until its first wait (or its end)
    }
    for (;;) {
      int live = 0, at_block = 0, progressed = 0;
      for (int t = 0; t < block; ++t) {
        live += nc_state[t] != NC_DONE;
        at_block += nc_state[t] == NC_BLOCK;
      }
      if (!live) break;
      for (int w = 0; w < block; w += 32) {  // a warp whose lanes all wait at a shuffle
        bool all = true;
        for (int t = w; t < w + 32; ++t) all = all && nc_state[t] == NC_WARP;
        if (all) {
          for (int t = w; t < w + 32; ++t) nc_resume(t);
          progressed = 1;
        }
      }
      if (!progressed && at_block == live) {  // every live thread at __syncthreads
        for (int t = 0; t < block; ++t)
          if (nc_state[t] == NC_BLOCK) nc_resume(t);
        progressed = 1;
      }
      if (!progressed) {
        std::fprintf(stderr, "nc_emulate: block %d deadlocks (threads wait at different barriers)\n", b);
        std::abort();
      }
    }
  }
}

// ---------------------------------------------------------------- bf16 and WMMA
struct __nv_bfloat16 {
  unsigned short bits;
  operator float() const {
    unsigned u = (unsigned)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even (NaN stays NaN)
  unsigned u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if (std::isnan(f)) { h.bits = (unsigned short)((u >> 16) | 0x40); return h; }
  u += 0x7fff + ((u >> 16) & 1);
  h.bits = (unsigned short)(u >> 16);
  return h;
}

namespace nvcuda { namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct nc_dims;
template <int M, int N, int K> struct nc_dims<matrix_a, M, N, K> { enum { R = M, C = K }; };
template <int M, int N, int K> struct nc_dims<matrix_b, M, N, K> { enum { R = K, C = N }; };
template <int M, int N, int K> struct nc_dims<accumulator, M, N, K> { enum { R = M, C = N }; };

// a fragment: the whole R x C tile, row-major, in every thread
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  enum { R = nc_dims<Use, M, N, K>::R, C = nc_dims<Use, M, N, K>::C, num_elements = R * C };
  float x[R * C];
};

inline float __float_to_tf32(float f) {  // 10 mantissa bits, to nearest, ties away from zero
  if (!std::isfinite(f)) return f;
  unsigned u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class F> inline void fill_fragment(F& f, float v) {
  for (int i = 0; i < F::num_elements; ++i) f.x[i] = v;
}
template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  typedef fragment<Use, M, N, K, T, Layout> F;
  const bool rows = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::R; ++r)
    for (int c = 0; c < F::C; ++c)
      f.x[r * F::C + c] = (float)(rows ? p[r * ldm + c] : p[c * ldm + r]);
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) {
      if (layout == mem_row_major) p[r * ldm + c] = f.x[r * N + c];
      else p[c * ldm + r] = f.x[r * N + c];
    }
}
template <int M, int N, int K, class T, class TA, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, T>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b,
                     const fragment<accumulator, M, N, K, T>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s = std::fma(a.x[i * K + k], b.x[k * N + j], s);
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}
} }  // namespace nvcuda::wmma
