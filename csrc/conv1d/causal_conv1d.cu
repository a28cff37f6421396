// Causal depthwise conv1d for Mamba2 (see causal_conv1d.h for the C interface and semantics).
// One thread per output element; a block covers kBlockT consecutive time steps of one (b, c) row, so loads are
// coalesced for the channels-first layout (x stride over t == 1). The backward block also reduces the weight and
// bias gradients of its row segment in shared memory and writes one partial per block (no atomics).
#include "causal_conv1d.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kBlockT = 128;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float silu(float v) { return v / (1.f + __expf(-v)); }

// Pre-activation at time t of row (b, c): bias + sum_k w[W-1-k] x[t-k], dropping other documents' steps.
template <typename T, int W, bool HAS_SEQ>
__device__ __forceinline__ float conv_at(const T* xr, int64_t x_st, const float* w, float b0, const int32_t* sr,
                                         int64_t s_st, int t) {
  float acc = b0;
  const int32_t s0 = HAS_SEQ ? sr[t * s_st] : 0;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    const int tt = t - k;
    if (tt >= 0 && (!HAS_SEQ || sr[tt * s_st] == s0)) acc += w[W - 1 - k] * to_f(xr[tt * x_st]);
  }
  return acc;
}

template <typename T, int W, bool SILU, bool HAS_SEQ>
__global__ void conv1d_fwd_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                  const int32_t* __restrict__ seq, T* __restrict__ out, int C, int Tn,
                                  int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t o_sb, int64_t o_sc, int64_t o_st,
                                  int64_t s_sb, int64_t s_st) {
  const int c = blockIdx.y, b = blockIdx.z;
  const int t = blockIdx.x * kBlockT + threadIdx.x;
  if (t >= Tn) return;
  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = to_f(weight[c * W + k]);
  const float b0 = bias ? to_f(bias[c]) : 0.f;
  float v = conv_at<T, W, HAS_SEQ>(x + b * x_sb + c * x_sc, x_st, w, b0, HAS_SEQ ? seq + b * s_sb : nullptr, s_st, t);
  if (SILU) v = silu(v);
  out[b * o_sb + c * o_sc + t * o_st] = from_f<T>(v);
}

template <typename T, int W, bool SILU, bool HAS_SEQ>
__global__ void conv1d_bwd_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                  const int32_t* __restrict__ seq, const T* __restrict__ dout, T* __restrict__ dx,
                                  float* __restrict__ dw_part, float* __restrict__ db_part, int C, int Tn,
                                  int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t g_sb, int64_t g_sc, int64_t g_st,
                                  int64_t dx_sb, int64_t dx_sc, int64_t dx_st, int64_t s_sb, int64_t s_st) {
  const int c = blockIdx.y, b = blockIdx.z, blk = blockIdx.x;
  const int t = blk * kBlockT + threadIdx.x;
  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = to_f(weight[c * W + k]);
  const float b0 = bias ? to_f(bias[c]) : 0.f;
  const T* xr = x + b * x_sb + c * x_sc;
  const T* gr = dout + b * g_sb + c * g_sc;
  const int32_t* sr = HAS_SEQ ? seq + b * s_sb : nullptr;
  // d pre-activation at time s (recomputes the forward at s when SILU).
  auto dpre = [&](int s) -> float {
    float g = to_f(gr[s * g_st]);
    if (SILU) {
      const float v = conv_at<T, W, HAS_SEQ>(xr, x_st, w, b0, sr, s_st, s);
      const float sg = 1.f / (1.f + __expf(-v));
      g *= sg * (1.f + v * (1.f - sg));
    }
    return g;
  };
  float part[W + 1];
#pragma unroll
  for (int k = 0; k <= W; ++k) part[k] = 0.f;
  if (t < Tn) {
    const int32_t s0 = HAS_SEQ ? sr[t * s_st] : 0;
    const float g0 = dpre(t);
    float acc = w[W - 1] * g0;
#pragma unroll
    for (int k = 1; k < W; ++k) {   // out[t+k] used x[t] through tap W-1-k when t+k is in the same document
      const int tk = t + k;
      if (tk < Tn && (!HAS_SEQ || sr[tk * s_st] == s0)) acc += w[W - 1 - k] * dpre(tk);
    }
    dx[b * dx_sb + c * dx_sc + t * dx_st] = from_f<T>(acc);
#pragma unroll
    for (int k = 0; k < W; ++k) {   // dweight[W-1-k] += g0 * x[t-k]
      const int tt = t - k;
      if (tt >= 0 && (!HAS_SEQ || sr[tt * s_st] == s0)) part[W - 1 - k] = g0 * to_f(xr[tt * x_st]);
    }
    part[W] = g0;
  }
  // Block reduction of the W + 1 partial sums: warp shuffles, then one value per warp in shared memory.
  __shared__ float red[kBlockT / 32][W + 1];
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
    for (int i = 0; i < kBlockT / 32; ++i) v += red[i][threadIdx.x];
    const int64_t nblk = gridDim.x;
    if (threadIdx.x < W) dw_part[((b * nblk + blk) * C + c) * W + threadIdx.x] = v;
    else if (db_part) db_part[(b * nblk + blk) * C + c] = v;
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
  out[b * o_sb + c * o_sc] = from_f<T>(SILU ? silu(acc) : acc);
}

// Runtime (dtype, W, silu, has_seq) -> template instantiation.

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
  dim3 grid((T + kBlockT - 1) / kBlockT, C, B);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  PRISM_DISPATCH_DTYPE(dtype, PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu, PRISM_DISPATCH_BOOL(
      seq_idx != nullptr, kSeq,
      conv1d_fwd_kernel<scalar_t, kW, kSilu, kSeq><<<grid, kBlockT, 0, s>>>(
          static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(weight),
          static_cast<const scalar_t*>(bias), seq_idx, static_cast<scalar_t*>(out), C, T,
          x_sb, x_sc, x_st, o_sb, o_sc, o_st, s_sb, s_st)))));
  return static_cast<int>(cudaGetLastError());
}

int prism_conv1d_bwd(int dtype, const void* x, const void* weight, const void* bias, const int32_t* seq_idx,
                     const void* dout, void* dx, float* dweight_part, float* dbias_part, int B, int C, int T, int W,
                     int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t g_sb, int64_t g_sc, int64_t g_st,
                     int64_t dx_sb, int64_t dx_sc, int64_t dx_st, int64_t s_sb, int64_t s_st, int silu_on,
                     void* stream) {
  if (B == 0 || C == 0 || T == 0) return 0;
  dim3 grid((T + kBlockT - 1) / kBlockT, C, B);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  PRISM_DISPATCH_DTYPE(dtype, PRISM_DISPATCH_W(W, PRISM_DISPATCH_BOOL(silu_on, kSilu, PRISM_DISPATCH_BOOL(
      seq_idx != nullptr, kSeq,
      conv1d_bwd_kernel<scalar_t, kW, kSilu, kSeq><<<grid, kBlockT, 0, s>>>(
          static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(weight),
          static_cast<const scalar_t*>(bias), seq_idx, static_cast<const scalar_t*>(dout),
          static_cast<scalar_t*>(dx), dweight_part, dbias_part, C, T, x_sb, x_sc, x_st, g_sb, g_sc, g_st,
          dx_sb, dx_sc, dx_st, s_sb, s_st)))));
  return static_cast<int>(cudaGetLastError());
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
