// Tensor-level declarations shared by the CPU and CUDA implementations of the pixel ops.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/tensor_utils.h"
#include "pixel/math.h"
#include "pixel/weight_index.h"

namespace fastgenloss {

// The scalar arguments of pixel_fwd / pixel_bwd, in schema order.
struct PixelParams {
  double l1, mse, charbonnier, huber, smooth_l1;
  double eps, delta, beta;
  int64_t reduction;

  // The kernels' coefficients, smooth-l1 folded into huber or l1 where it can be.
  template <typename acc_t>
  PixelCoeffs<acc_t> coeffs() const {
    return fold_smooth_l1(PixelCoeffs<acc_t>{acc_t(l1), acc_t(mse), acc_t(charbonnier),
                                             acc_t(huber), acc_t(smooth_l1), acc_t(eps * eps),
                                             acc_t(delta), acc_t(beta)});
  }
  PixelTermsUsed terms() const { return pixel_terms_used(coeffs<double>()); }
};

// input, target and weight, checked and laid out for a linear walk over the input's storage.
// The weight is either laid out like x (windex empty: element i at w[i]) or, when it is a
// broadcast view, left in place and read through *windex (never copied to x's full size).
struct PixelOperands {
  at::Tensor x, y;
  std::optional<at::Tensor> w;
  std::optional<WeightIndex> windex;
  const WeightIndex* weight_index() const { return windex.has_value() ? &*windex : nullptr; }
};

PixelOperands pixel_operands(const char* op, const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const PixelParams& p);

// pixel_bwd's grad_output, checked and in input's dtype: one element for a scalar reduction
// or a broadcast scalar (read in place, never materialized), otherwise laid out like x.
at::Tensor pixel_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& x, int64_t reduction);

// Outputs of pixel_fwd: (loss, grad, weight_sum). See ops.cpp for their meaning.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_fwd_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool write_grad);

std::tuple<at::Tensor, at::Tensor> pixel_bwd_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& loss, const at::Tensor& weight_sum,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool input_grad, bool weight_grad);

}  // namespace fastgenloss
