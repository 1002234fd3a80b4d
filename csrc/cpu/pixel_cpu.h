// The CPU pixel-loss kernels' entry points, defined in pixel_cpu_kernels.h and instantiated
// for float, double, at::Half and at::BFloat16 in pixel_cpu_<dtype>.cpp: four translation units
// that compile in parallel (one file of every variant was ~4 minutes of a single core).
#pragma once

#include <ATen/ATen.h>

#include "fastgenloss/pixel_ops.h"

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
