// The CPU pixel-loss kernels' entry points, defined in cpu_kernels.h and instantiated for
// float, double, at::Half and at::BFloat16 in generated translation units
// (FGL_PIXEL_CPU_INSTANTIATE): four that compile in parallel.
#pragma once

#include <ATen/ATen.h>

#include "pixel/ops.h"

namespace fastgenloss {
namespace pixel_cpu {

// Scalar reductions: the loss (and the weight sum of weighted means) into loss / *wsum, the
// input gradient into *grad when grad is not null.
template <typename scalar_t>
void fwd_reduce(const PixelOperands& o, at::Tensor* grad, const PixelParams& p, at::Tensor& loss,
                at::Tensor* wsum);
// reduction="none": the elementwise loss into out.
template <typename scalar_t>
void fwd_none(const PixelOperands& o, const PixelParams& p, at::Tensor& out);
// The input and / or weight gradients from the output gradient go.
template <typename scalar_t>
void bwd(const at::Tensor& go, const PixelOperands& o, const at::Tensor& loss,
         const at::Tensor& wsum, const PixelParams& p, at::Tensor* gi, at::Tensor* gw);

}  // namespace pixel_cpu
}  // namespace fastgenloss
