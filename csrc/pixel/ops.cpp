// Op schemas (defined once, here) and the argument checks both backends share.
//
// pixel_fwd(input, target, weight?, coefficients..., reduction, write_grad)
//     -> (loss, grad, weight_sum)
//   loss:       reduction none: w*l per element, laid out like empty_like(input);
//               otherwise a 0-dim tensor of input's dtype.
//   grad:       when write_grad and the reduction is scalar: per-element d(loss)/d(input) for
//               grad_output = 1 (mean, sum), or w*dl/dd still to be divided by weight_sum
//               (weight/masked mean); otherwise an empty [0] tensor. It is donated to
//               backward: in eager mode the first backward scales it in place and returns it
//               as the input gradient, so a caller must not keep it (fastgenloss's API drops it).
//   weight_sum: for the weight-normalized means, sum(w) as a 0-dim float (double for double
//               input); otherwise an empty [0] tensor.
// pixel_bwd(grad_output, input, target, weight?, loss, weight_sum, coefficients..., reduction,
//           input_grad, weight_grad) -> (grad_input, grad_weight)
//   grad_input: d/d(input) (grad_target is its negation); grad_weight: d/d(weight, expanded
//   to input's shape). Each is an empty [0] tensor when not asked for.
#include <torch/library.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "pixel/ops.h"

namespace fastgenloss {
namespace {

// Backstop checks for direct op calls (the Python API checks first, with its own names).
void check_pixel_args(const char* op, const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight, const PixelParams& p) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point ",
              "tensor, got ", input.scalar_type(), " ", input.sizes());
  TORCH_CHECK(target.scalar_type() == input.scalar_type(), op, ": target dtype ",
              target.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(target.sizes() == input.sizes(), op, ": target ", target.sizes(),
              " and input ", input.sizes(), " must have the same shape");
  TORCH_CHECK(target.device() == input.device(), op, ": target is on ", target.device(),
              " but input is on ", input.device());
  if (weight.has_value()) {
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), op, ": weight dtype ",
                weight->scalar_type(), " differs from input dtype ", input.scalar_type());
    TORCH_CHECK(weight->sizes() == input.sizes(), op, ": weight ", weight->sizes(),
                " must be expanded to input's shape ", input.sizes());
    TORCH_CHECK(weight->device() == input.device(), op, ": weight is on ", weight->device(),
                " but input is on ", input.device());
  }
  TORCH_CHECK(p.reduction >= kReduceNone && p.reduction <= kReduceMaskedMean, op,
              ": unknown reduction code ", p.reduction);
  TORCH_CHECK(p.eps >= 0.0, op, ": eps must be >= 0, got ", p.eps);
  TORCH_CHECK(p.huber == 0.0 || p.delta > 0.0, op, ": delta must be > 0, got ", p.delta);
  TORCH_CHECK(p.smooth_l1 == 0.0 || p.beta >= 0.0, op, ": beta must be >= 0, got ", p.beta);
}

// `input` itself when it is non-overlapping and dense (contiguous, channels_last, any
// permutation), otherwise a copy laid out as at::empty_like(input) lays it out. Kernels then
// walk the storage linearly: the element order does not matter to an elementwise loss.
at::Tensor dense_input(const at::Tensor& input) {
  if (input.is_non_overlapping_and_dense()) return input;
  return empty_like_output(input).copy_(input);
}

// True when every element of t is one value seen through zero strides (an expanded scalar, as
// autograd passes to a reduction="none" op under .mean() or .sum()).
bool broadcast_scalar(const at::Tensor& t) {
  if (t.numel() <= 1) return t.numel() == 1;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) != 0) return false;
  }
  return true;
}

// The index through which `w` (input's shape, any strides) is read along `x`'s dense memory
// order, or nothing when it cannot use one (more than kMaxIndexDims dims after merging, or an
// innermost step other than 0 or 1): then it is copied into x's layout.
std::optional<WeightIndex> weight_index_for(const at::Tensor& w, const at::Tensor& x) {
  // x's dims in memory order (x is dense: its strides sorted descending give that order).
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) > 1) dims.push_back(d);
  }
  std::stable_sort(dims.begin(), dims.end(),
                   [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  std::vector<int64_t> size, stride;
  for (const int64_t d : dims) {
    const int64_t s = x.size(d), ws = w.stride(d);
    // merge into the previous (outer) dim when the weight walks both as one
    if (!size.empty() && stride.back() == ws * s) {
      size.back() *= s;
      stride.back() = ws;
    } else {
      size.push_back(s);
      stride.push_back(ws);
    }
  }
  if (size.empty() || size.size() > size_t(kMaxIndexDims)) return std::nullopt;
  if (stride.back() != 0 && stride.back() != 1) return std::nullopt;
  WeightIndex idx;
  idx.ndim = int(size.size());
  std::copy(size.begin(), size.end(), idx.size);
  std::copy(stride.begin(), stride.end(), idx.stride);
  return idx;
}

}  // namespace

PixelOperands pixel_operands(const char* op, const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const PixelParams& p) {
  check_pixel_args(op, input, target, weight, p);
  PixelOperands o{dense_input(input), at::Tensor(), std::nullopt, std::nullopt};
  o.y = match_layout(target, o.x);
  if (weight.has_value()) {
    // read in place when laid out like x or walkable through an index, else copied once
    if (weight->sizes() == o.x.sizes() && weight->strides() == o.x.strides()) {
      o.w = *weight;
    } else {
      o.windex = weight_index_for(*weight, o.x);
      o.w = o.windex.has_value() ? *weight : match_layout(*weight, o.x);
    }
  }
  return o;
}

at::Tensor pixel_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& x, int64_t reduction) {
  TORCH_CHECK(grad_output.device() == input.device(), "fastgenloss::pixel_bwd: grad_output is on ",
              grad_output.device(), " but input is on ", input.device());
  if (reduction != kReduceNone) {
    TORCH_CHECK(grad_output.numel() == 1, "fastgenloss::pixel_bwd: grad_output must be a scalar, got ",
                grad_output.sizes());
    return grad_output.to(input.scalar_type()).contiguous();
  }
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "fastgenloss::pixel_bwd: grad_output ",
              grad_output.sizes(), " must have input's shape ", input.sizes());
  if (broadcast_scalar(grad_output)) {
    return grad_output.as_strided({1}, {1}).to(input.scalar_type()).contiguous();
  }
  return match_layout(grad_output.to(input.scalar_type()), x);
}

}  // namespace fastgenloss

TORCH_LIBRARY_FRAGMENT(fastgenloss, m) {
  m.def(
      "pixel_fwd(Tensor input, Tensor target, Tensor? weight, float l1, float mse, "
      "float charbonnier, float huber, float smooth_l1, float eps, float delta, float beta, "
      "int reduction, bool write_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pixel_bwd(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor loss, "
      "Tensor weight_sum, float l1, float mse, float charbonnier, float huber, float smooth_l1, "
      "float eps, float delta, float beta, int reduction, bool input_grad, bool weight_grad) "
      "-> (Tensor, Tensor)");
}