// Causal depthwise conv1d for Mamba2 (see causal_conv1d.h for the C interface and semantics).
//
// The per-thread work is a __host__ __device__ "row segment" function: one (b, c) row over steps [t0, t1).
// Two launch shapes call it, picked by the input layout so that a warp's loads are coalesced:
//   channels-first (x stride over t == 1): one thread per step t (segment of length 1), a block = 128 steps
//     of one row; the backward reduces dweight/dbias over the block with warp shuffles;
//   channels-last (stride over C == 1, the transposed [B, T, C] view the Mamba2 mixer passes): one thread per
//     channel sliding over 128 steps, so a warp reads 32 adjacent channels of one step; the backward keeps the
//     last W d(pre-activation) values in registers and owns its channel's dweight/dbias partial outright.
// Both write one dweight/dbias partial per (b, 128-step block, c): no atomics, deterministic sums in Python.
// The same segment functions are exported for the host (fp32, prism_conv1d_*_host) so CPU-only CI can check the
// kernels' indexing, masking and window logic against the torch reference without a GPU.
#include "causal_conv1d.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

namespace {

constexpr int kBlockT = 128;   // steps per block (both layouts) = granularity of the dweight partials
constexpr int kThreads = 128;

__host__ __device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __host__ __device__ __forceinline__ T from_f(float v);
template <> __host__ __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ __forceinline__ float sigmoid(float v) {
#ifdef __CUDA_ARCH__
  return 1.f / (1.f + __expf(-v));
#else
  return 1.f / (1.f + expf(-v));
#endif
}

struct ConvArgs {
  const void* x; const void* weight; const void* bias; const int32_t* seq; const void* dout;
  void* out;                       // out (forward) or dx (backward)
  float* dw_part; float* db_part;  // [B, nblk, C, W], [B, nblk, C] (backward)
  int C, T;
  int64_t x_sb, x_sc, x_st, g_sb, g_sc, g_st, o_sb, o_sc, o_st, s_sb, s_st;
};

template <typename T, int W, bool HAS_SEQ>
struct Row {
  const T* x; const int32_t* s; int64_t x_st, s_st; float w[W]; float b0; int Tn;
  __host__ __device__ Row(const ConvArgs& a, int b, int c) {
    x = static_cast<const T*>(a.x) + b * a.x_sb + c * a.x_sc;
    s = HAS_SEQ ? a.seq + b * a.s_sb : nullptr;
    x_st = a.x_st; s_st = a.s_st; Tn = a.T;
    const T* wp = static_cast<const T*>(a.weight) + int64_t(c) * W;
#pragma unroll
    for (int k = 0; k < W; ++k) w[k] = to_f(wp[k]);
    b0 = a.bias ? to_f(static_cast<const T*>(a.bias)[c]) : 0.f;
  }
  __host__ __device__ int seq(int t) const { return HAS_SEQ ? s[t * s_st] : 0; }
  __host__ __device__ bool same(int t, int u) const { return !HAS_SEQ || seq(t) == seq(u); }
  // Pre-activation at t: bias + sum_k w[W-1-k] x[t-k] over steps of t's document.
  __host__ __device__ float pre(int t) const {
    float acc = b0;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int tt = t - k;
      if (tt >= 0 && same(tt, t)) acc += w[W - 1 - k] * to_f(x[tt * x_st]);
    }
    return acc;
  }
};

template <typename T, int W, bool SILU, bool HAS_SEQ>
__host__ __device__ void fwd_segment(const ConvArgs& a, int b, int c, int t0, int t1) {
  Row<T, W, HAS_SEQ> r(a, b, c);
  T* o = static_cast<T*>(a.out) + b * a.o_sb + c * a.o_sc;
  for (int t = t0; t < t1; ++t) {
    float v = r.pre(t);   // W loads per step; the overlapping ones hit L1
    if (SILU) v *= sigmoid(v);
    o[t * a.o_st] = from_f<T>(v);
  }
}

// dx over [t0, t1) of one row, plus the dweight (part[0..W-1]) and dbias (part[W]) contributions of those steps.
template <typename T, int W, bool SILU, bool HAS_SEQ>
__host__ __device__ void bwd_segment(const ConvArgs& a, int b, int c, int t0, int t1, float* part) {
  Row<T, W, HAS_SEQ> r(a, b, c);
  const T* g = static_cast<const T*>(a.dout) + b * a.g_sb + c * a.g_sc;
  T* dx = static_cast<T*>(a.out) + b * a.o_sb + c * a.o_sc;
  auto dpre = [&](int s) -> float {
    if (s >= r.Tn) return 0.f;
    float v = to_f(g[s * a.g_st]);
    if (SILU) {
      const float p = r.pre(s), sg = sigmoid(p);
      v *= sg * (1.f + p * (1.f - sg));
    }
    return v;
  };
  float win[W];   // win[k] = dpre(t + k) after the shift at the top of each step (t walks down)
#pragma unroll
  for (int k = 0; k < W - 1; ++k) win[k] = dpre(t1 + k);
  for (int t = t1 - 1; t >= t0; --t) {
#pragma unroll
    for (int k = W - 1; k > 0; --k) win[k] = win[k - 1];
    win[0] = dpre(t);
    float acc = r.w[W - 1] * win[0];
#pragma unroll
    for (int k = 1; k < W; ++k)   // out[t+k] read x[t] through tap W-1-k when t+k is in t's document
      if (t + k < r.Tn && r.same(t + k, t)) acc += r.w[W - 1 - k] * win[k];
    dx[t * a.o_st] = from_f<T>(acc);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int tt = t - k;
      if (tt >= 0 && r.same(tt, t)) part[W - 1 - k] += win[0] * to_f(r.x[tt * r.x_st]);
    }
    part[W] += win[0];
  }
}

template <typename T, int W, bool SILU, bool HAS_SEQ, bool CL>
__global__ void __launch_bounds__(kThreads) conv1d_fwd_kernel(ConvArgs a) {
  if (CL) {
    const int c = blockIdx.x * kThreads + threadIdx.x, t0 = blockIdx.y * kBlockT;
    if (c < a.C) fwd_segment<T, W, SILU, HAS_SEQ>(a, blockIdx.z, c, t0, min(t0 + kBlockT, a.T));
  } else {
    const int t = blockIdx.x * kBlockT + threadIdx.x;
    if (t < a.T) fwd_segment<T, W, SILU, HAS_SEQ>(a, blockIdx.z, blockIdx.y, t, t + 1);
  }
}

template <typename T, int W, bool SILU, bool HAS_SEQ, bool CL>
__global__ void __launch_bounds__(kThreads) conv1d_bwd_kernel(ConvArgs a) {
  float part[W + 1];
#pragma unroll
  for (int k = 0; k <= W; ++k) part[k] = 0.f;
  const int b = blockIdx.z;
  const int64_t nblk = (a.T + kBlockT - 1) / kBlockT;
  if (CL) {
    const int c = blockIdx.x * kThreads + threadIdx.x, blk = blockIdx.y, t0 = blk * kBlockT;
    if (c >= a.C) return;
    bwd_segment<T, W, SILU, HAS_SEQ>(a, b, c, t0, min(t0 + kBlockT, a.T), part);
#pragma unroll
    for (int k = 0; k < W; ++k) a.dw_part[((b * nblk + blk) * a.C + c) * W + k] = part[k];
    if (a.db_part) a.db_part[(b * nblk + blk) * a.C + c] = part[W];
    return;
  }
  const int c = blockIdx.y, blk = blockIdx.x, t = blk * kBlockT + threadIdx.x;
  if (t < a.T) bwd_segment<T, W, SILU, HAS_SEQ>(a, b, c, t, t + 1, part);
  // Block reduction of the W + 1 partial sums: warp shuffles, then one value per warp in shared memory.
  __shared__ float red[kThreads / 32][W + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k <= W; ++k) {
    float v = part[k];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) red[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x <= W) {
    float v = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) v += red[i][threadIdx.x];
    if (threadIdx.x < W) a.dw_part[((b * nblk + blk) * a.C + c) * W + threadIdx.x] = v;
    else if (a.db_part) a.db_part[(b * nblk + blk) * a.C + c] = v;
  }
}

template <typename T, int W, bool SILU>
__global__ void conv1d_update_kernel(const T* __restrict__ x, T* __restrict__ state, const T* __restrict__ weight,
                                     const T* __restrict__ bias, T* __restrict__ out, int Bn, int C,
                                     int64_t x_sb, int64_t x_sc, int64_t cs_sb, int64_t cs_sc, int64_t cs_sk,
                                     int64_t o_sb, int64_t o_sc) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(Bn) * C) return;
  const int b = i / C, c = i % C;
  T* st = state + b * cs_sb + c * cs_sc;
  float win[W];
#pragma unroll
  for (int k = 0; k < W - 1; ++k) win[k] = to_f(st[k * cs_sk]);
  win[W - 1] = to_f(x[b * x_sb + c * x_sc]);
  float acc = bias ? to_f(bias[c]) : 0.f;
#pragma unroll
  for (int k = W - 1; k >= 0; --k) acc += to_f(weight[c * W + k]) * win[k];   // newest tap first, like the ref
#pragma unroll
  for (int k = 0; k < W - 1; ++k) st[k * cs_sk] = from_f<T>(win[k + 1]);
  out[b * o_sb + c * o_sc] = from_f<T>(SILU ? acc * sigmoid(acc) : acc);
}

bool channels_last(const ConvArgs& a) { return a.x_sc == 1 && a.x_st != 1; }

dim3 grid_for(const ConvArgs& a, int B, bool cl) {
  const unsigned nblk = (a.T + kBlockT - 1) / kBlockT;
  return cl ? dim3((a.C + kThreads - 1) / kThreads, nblk, B) : dim3(nblk, a.C, B);
}

// Host emulation of the launch shapes (fp32 only): same segment functions, same partial layout.
template <int W, bool SILU, bool HAS_SEQ>
void host_run(const ConvArgs& a, int B, bool cl, bool backward) {
  const int nblk = (a.T + kBlockT - 1) / kBlockT;
  for (int b = 0; b < B; ++b)
    for (int blk = 0; blk < nblk; ++blk)
      for (int c = 0; c < a.C; ++c) {
        const int t0 = blk * kBlockT, t1 = t0 + kBlockT < a.T ? t0 + kBlockT : a.T;
        float part[W + 1] = {};
        for (int t = t0; t < t1; t += cl ? kBlockT : 1) {
          const int e = cl ? t1 : t + 1;
          if (backward) bwd_segment<float, W, SILU, HAS_SEQ>(a, b, c, t, e, part);
          else fwd_segment<float, W, SILU, HAS_SEQ>(a, b, c, t, e);
        }
        if (!backward) continue;
        for (int k = 0; k < W; ++k) a.dw_part[((int64_t(b) * nblk + blk) * a.C + c) * W + k] = part[k];
        if (a.db_part) a.db_part[(int64_t(b) * nblk + blk) * a.C + c] = part[W];
      }
}

#define PRISM_DISPATCH_W(W_, ...)                                  \
  switch (W_) {                                                    \
    case 2: { constexpr int kW = 2; __VA_ARGS__; break; }          \
    case 3: { constexpr int kW = 3; __VA_ARGS__; break; }          \
    case 4: { constexpr int kW = 4; __VA_ARGS__; break; }          \
    default: return cudaErrorInvalidValue;                         \
  }
#define PRISM_DISPATCH_BOOL(v, NAME, ...)                          \
  if (v) { constexpr bool NAME = true; __VA_ARGS__; }              \
  else { constexpr bool NAME = false; __VA_ARGS__; }
#define PRISM_DISPATCH_DTYPE(d, ...)                               \
  switch (d) {                                                     \
    case 0: { using scalar_t = float; __VA_ARGS__; break; }        \
    case 1: { using scalar_t = __half; __VA_ARGS__; break; }       \
    case 2: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; } \
    default: return cudaErrorInvalidValue;                         \
  }

ConvArgs make_args(const void* x, const void* weight, const void* bias, const int32_t* seq, const void* dout,
                   void* out, float* dw, float* db, int C, int T, int64_t x_sb, int64_t x_sc, int64_t x_st,
                   int64_t g_sb, int64_t g_sc, int64_t g_st, int64_t o_sb, int64_t o_sc, int64_t o_st,
                   int64_t s_sb, int64_t s_st) {
  return ConvArgs{x, weight, bias, seq, dout, out, dw, db, C, T,
                  x_sb, x_sc, x_st, g_sb, g_sc, g_st, o_sb, o_sc, o_st, s_sb, s_st};
}

}  // namespace

extern "C" {

int prism_conv1d_bwd_block_t(void) { return kBlockT; }

int prism_cuda_device_count(int* count) { return static_cast<int>(cudaGetDeviceCount(count)); }

const char* prism_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

int prism_conv1d_fwd(int dtype, const void* x, const void* weight, const void* bias, const int32_t* seq_idx,
                     void* out, int B, int C, int T, int W, int64_t x_sb, int64_t x_sc, int64_t x_st,
                     int64_t o_sb, int64_t o_sc, int64_t o_st, int64_t s_sb, int64_t s_st, int silu_on,
                     void* stream) {
  if (B == 0 || C == 0 || T == 0) return 0;
  const ConvArgs a = make_args(x, weight, bias, seq_idx, nullptr, out, nullptr, nullptr, C, T, x_sb, x_sc, x_st,
                               0, 0, 0, o_sb, o_sc, o_st, s_sb, s_st);
  const bool cl = channels_last(a);
  const dim3 grid = grid_for(a, B, cl);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  PRISM_DISPATCH_DTYPE(dtype, PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu, PRISM_DISPATCH_BOOL(
      seq_idx != nullptr, kSeq, PRISM_DISPATCH_BOOL(cl, kCL,
      conv1d_fwd_kernel<scalar_t, kW, kSilu, kSeq, kCL><<<grid, kThreads, 0, s>>>(a))))));
  return static_cast<int>(cudaGetLastError());
}

int prism_conv1d_bwd(int dtype, const void* x, const void* weight, const void* bias, const int32_t* seq_idx,
                     const void* dout, void* dx, float* dweight_part, float* dbias_part, int B, int C, int T, int W,
                     int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t g_sb, int64_t g_sc, int64_t g_st,
                     int64_t dx_sb, int64_t dx_sc, int64_t dx_st, int64_t s_sb, int64_t s_st, int silu_on,
                     void* stream) {
  if (B == 0 || C == 0 || T == 0) return 0;
  const ConvArgs a = make_args(x, weight, bias, seq_idx, dout, dx, dweight_part, dbias_part, C, T, x_sb, x_sc,
                               x_st, g_sb, g_sc, g_st, dx_sb, dx_sc, dx_st, s_sb, s_st);
  const bool cl = channels_last(a);
  const dim3 grid = grid_for(a, B, cl);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  PRISM_DISPATCH_DTYPE(dtype, PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu, PRISM_DISPATCH_BOOL(
      seq_idx != nullptr, kSeq, PRISM_DISPATCH_BOOL(cl, kCL,
      conv1d_bwd_kernel<scalar_t, kW, kSilu, kSeq, kCL><<<grid, kThreads, 0, s>>>(a))))));
  return static_cast<int>(cudaGetLastError());
}

int prism_conv1d_host(int backward, int layout, const float* x, const float* weight, const float* bias,
                      const int32_t* seq_idx, const float* dout, float* out, float* dweight_part, float* dbias_part,
                      int B, int C, int T, int W, int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t g_sb,
                      int64_t g_sc, int64_t g_st, int64_t o_sb, int64_t o_sc, int64_t o_st, int64_t s_sb,
                      int64_t s_st, int silu_on) {
  const ConvArgs a = make_args(x, weight, bias, seq_idx, dout, out, dweight_part, dbias_part, C, T, x_sb, x_sc,
                               x_st, g_sb, g_sc, g_st, o_sb, o_sc, o_st, s_sb, s_st);
  PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu, PRISM_DISPATCH_BOOL(
      seq_idx != nullptr, kSeq, host_run<kW, kSilu, kSeq>(a, B, layout == 1, backward != 0))));
  return 0;
}

int prism_conv1d_update(int dtype, const void* x, void* conv_state, const void* weight, const void* bias, void* out,
                        int B, int C, int W, int64_t x_sb, int64_t x_sc, int64_t cs_sb, int64_t cs_sc,
                        int64_t cs_sk, int64_t o_sb, int64_t o_sc, int silu_on, void* stream) {
  if (B == 0 || C == 0) return 0;
  const int threads = 256;
  const int blocks = static_cast<int>((int64_t(B) * C + threads - 1) / threads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  PRISM_DISPATCH_DTYPE(dtype, PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu,
      conv1d_update_kernel<scalar_t, kW, kSilu><<<blocks, threads, 0, s>>>(
          static_cast<const scalar_t*>(x), static_cast<scalar_t*>(conv_state),
          static_cast<const scalar_t*>(weight), static_cast<const scalar_t*>(bias),
          static_cast<scalar_t*>(out), B, C, x_sb, x_sc, cs_sb, cs_sc, cs_sk, o_sb, o_sc))));
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
