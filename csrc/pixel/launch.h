// Launchers of the CUDA pixel kernels. Plain C++ with raw pointers, so that the .cu file never
// includes torch headers (nvcc compiles it quickly, and ATen's C++20 headers stay with g++).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "pixel/weight_index.h"

namespace fastgenloss {

struct PixelLaunch {
  DType dtype;
  int64_t n;                 // elements (dense, same layout for every per-element pointer)
  const void* input;
  const void* target;
  const void* weight;        // nullptr: unweighted
  bool weight_indexed;       // weight element of position i at weight_offset(weight_index, i), else i
  WeightIndex weight_index;
  double l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta;
  int64_t reduction;         // Reduction (core/reduction.h)
};

// Number of blocks the reducing forward uses on `device` for n elements; the caller allocates
// 2 * grid accumulators (float, or double for double input) of scratch for it.
int pixel_reduce_grid(int64_t n, int device);

// loss[0] (input dtype) and, for the weight-normalized means, wsum[0] (accumulation dtype);
// grad (may be nullptr): per-element gradient, see ops.cpp.
cudaError_t launch_pixel_fwd_reduce(const PixelLaunch& a, void* loss, void* wsum, void* grad,
                                  void* scratch, int grid, cudaStream_t stream);
// out[i] = w_i * l(d_i)
cudaError_t launch_pixel_fwd_none(const PixelLaunch& a, void* out, cudaStream_t stream);
// grad_output: one element (go_scalar; for reduction none, a value broadcast to every element),
// or n for reduction none. loss/wsum: forward outputs (device).
cudaError_t launch_pixel_bwd(const PixelLaunch& a, const void* grad_output, bool go_scalar,
                             const void* loss,
                           const void* wsum, void* grad_input, void* grad_weight,
                           cudaStream_t stream);

}  // namespace fastgenloss
