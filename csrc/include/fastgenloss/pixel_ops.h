// Tensor-level declarations shared by the CPU and CUDA implementations of the pixel ops.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastgenloss/pixel_math.h"
#include "fastgenloss/weight_index.h"

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

// Backstop checks for direct op calls (the Python API checks first, with its own names).
void check_pixel_args(const char* op, const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight, const PixelParams& p);

// `input` itself when it is non-overlapping and dense (contiguous, channels_last, any
// permutation), otherwise a copy laid out as at::empty_like(input) lays it out. Kernels then
// walk the storage linearly: the element order does not matter to an elementwise loss.
at::Tensor dense_input(const at::Tensor& input);

// `t`'s values with exactly `like`'s sizes and strides (`like` dense): `t` itself when it
// already matches, otherwise a copy. Used for target, weight (broadcast weights arrive
// expanded, with zero strides) and per-element grad_output.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like);

// True when every element of t is one value seen through zero strides (an expanded scalar, as
// autograd passes to a reduction="none" op under .mean() or .sum()).
bool broadcast_scalar(const at::Tensor& t);

// input, target and weight, checked and laid out for a linear walk over the input's storage.
// The weight is either laid out like x (windex empty: element i at w[i]) or, when it is a
// broadcast view, left in place and read through *windex (never copied to x's full size).
struct PixelOperands {
  at::Tensor x, y;
  std::optional<at::Tensor> w;
  std::optional<WeightIndex> windex;
  const at::Tensor* weight() const { return w.has_value() ? &*w : nullptr; }
  const WeightIndex* weight_index() const { return windex.has_value() ? &*windex : nullptr; }
};

// The index through which `w` (input's shape, any strides) is read along `x`'s dense memory
// order, or nothing when it cannot use one (more than kMaxIndexDims dims after merging, or an
// innermost step other than 0 or 1): then it is copied into x's layout.
std::optional<WeightIndex> weight_index_for(const at::Tensor& w, const at::Tensor& x);
PixelOperands pixel_operands(const char* op, const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const PixelParams& p);

// pixel_bwd's grad_output, checked and in input's dtype: one element for a scalar reduction
// or a broadcast scalar (read in place, never materialized), otherwise laid out like x.
at::Tensor pixel_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& x, int64_t reduction);

// Outputs of pixel_fwd: (loss, grad, weight_sum). See csrc/ops.cpp for their meaning.
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
