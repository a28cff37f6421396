// C interface of libprism_cuda.so (causal depthwise conv1d, causal_conv1d_fn semantics). All pointers are device
// pointers; strides are in elements; `stream` is a cudaStream_t (0 = default). Every function returns a
// cudaError_t value (0 = success); prism_cuda_error_string() turns it into text.
// dtype codes: 0 = float32, 1 = float16, 2 = bfloat16 (x, weight, bias, out, conv_state share it).
// seq_idx, when not NULL, is int32 [B, T]; terms x[t-k] with seq_idx[t-k] != seq_idx[t] are dropped.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PRISM_API __attribute__((visibility("default")))

// out[b,c,t] = act(bias[c] + sum_k weight[c, W-1-k] * x[b,c,t-k]);  weight contiguous [C, W], W in 2..4.
PRISM_API int prism_conv1d_fwd(int dtype, const void* x, const void* weight, const void* bias, const int32_t* seq_idx,
                               void* out, int B, int C, int T, int W,
                               int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t o_sb, int64_t o_sc, int64_t o_st,
                               int64_t s_sb, int64_t s_st, int silu, void* stream);

// dx [B,C,T] (x's dtype); dweight_part fp32 [B, nblk, C, W] and dbias_part fp32 [B, nblk, C] (may be NULL),
// nblk = ceil(T / prism_conv1d_bwd_block_t()); the caller sums the partials (no atomics, deterministic).
PRISM_API int prism_conv1d_bwd(int dtype, const void* x, const void* weight, const void* bias,
                               const int32_t* seq_idx, const void* dout, void* dx, float* dweight_part,
                               float* dbias_part, int B, int C, int T, int W,
                               int64_t x_sb, int64_t x_sc, int64_t x_st, int64_t g_sb, int64_t g_sc, int64_t g_st,
                               int64_t dx_sb, int64_t dx_sc, int64_t dx_st, int64_t s_sb, int64_t s_st, int silu,
                               void* stream);
PRISM_API int prism_conv1d_bwd_block_t(void);

// One decoding step: window = [conv_state[b,c,:], x[b,c]], out = act(bias + sum_k weight[c,k] window[k]),
// conv_state <- window[1:] (in place). conv_state [B, C, W-1].
PRISM_API int prism_conv1d_update(int dtype, const void* x, void* conv_state, const void* weight, const void* bias,
                                  void* out, int B, int C, int W, int64_t x_sb, int64_t x_sc,
                                  int64_t cs_sb, int64_t cs_sc, int64_t cs_sk, int64_t o_sb, int64_t o_sc,
                                  int silu, void* stream);

// CPU emulation of the fwd (backward = 0) / bwd (backward = 1) kernels, fp32 only, for tests on machines without a
// GPU: runs the kernels' own per-thread code with the channels-first (layout 0) or channels-last (layout 1) launch
// shape. For the forward, dout / g_* / partials are unused and `out` is the output; for the backward, `out` is dx.
PRISM_API int prism_conv1d_host(int backward, int layout, const float* x, const float* weight, const float* bias,
                                const int32_t* seq_idx, const float* dout, float* out, float* dweight_part,
                                float* dbias_part, int B, int C, int T, int W, int64_t x_sb, int64_t x_sc,
                                int64_t x_st, int64_t g_sb, int64_t g_sc, int64_t g_st, int64_t o_sb, int64_t o_sc,
                                int64_t o_st, int64_t s_sb, int64_t s_st, int silu_on);

PRISM_API int prism_cuda_device_count(int* count);
PRISM_API const char* prism_cuda_error_string(int err);

#ifdef __cplusplus
}
#endif
