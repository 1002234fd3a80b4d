// The style ops' hook into the hand-written CUDA Gram kernel (cuda.cpp, kernels.cu). It runs
// only when the experimental switch gram_cuda_kernel is on (fastgenloss/config.py); otherwise
// the Gram matrices go through cuBLAS (ATen).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastgenloss {

#ifdef FGL_WITH_CUDA
// Whether the kernel takes features f3 [N, C, L] (CUDA, float32 / float16 / bfloat16, sizes it
// was built for) -- and the switch is on.
bool gram_cuda_takes(const at::Tensor& f3);
// scale F F^T as [N, C, C] in F's dtype.
at::Tensor gram_cuda(const at::Tensor& f3, double scale);
// D = scale (X X^T - Y Y^T) - G_t as float [N, C, C], and sum(D^2) (float, 0-dim); y3 and
// target_gram ([B, C, C], B = 1 or N) may each be undefined.
std::tuple<at::Tensor, at::Tensor> style_diff_cuda(const at::Tensor& x3, const at::Tensor& y3,
                                                   const at::Tensor& target_gram, double scale);
#endif

}  // namespace fastgenloss
