// Device helpers shared by the CUDA kernel files: accumulation types, 16-byte packs and
// fixed-order block sums. Included only by .cu files (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "core/config.h"
#include "core/dtype.h"

namespace fastgenloss {
namespace {

constexpr int kThreads = 256;
constexpr int kFinishThreads = 512;


__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_type_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 16 bytes of T: the unit of every vector load and store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block in a fixed order; the result is valid in thread 0.
template <typename acc_t, int kBlockThreads>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_part[kBlockThreads / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  v = threadIdx.x < kBlockThreads / 32 ? warp_part[threadIdx.x] : acc_t(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // warp_part may be reused by a second call
  return v;
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

template <typename F>
cudaError_t dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::Float: f(float{}); break;
    case DType::Double: f(double{}); break;
    case DType::Half: f(__half{}); break;
    case DType::BFloat16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Streaming multiprocessors of `device` (132 when the query fails: fills any current GPU).
int sm_count(int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // clear
    sms = 132;
  }
  return sms;
}

// Blocks per SM the reducing grids are sized for: 4 by default (1024 threads with 256-thread
// blocks); fastgenloss.config's cuda_blocks_per_sm (1..32) sets it, for tuning.
int blocks_per_sm() {
  const int64_t x = get_switch(Switch::kCudaBlocksPerSm);
  return x >= 1 && x <= 32 ? int(x) : 4;
}

}  // namespace
}  // namespace fastgenloss
