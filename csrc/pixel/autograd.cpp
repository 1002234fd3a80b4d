// The pixel ops' autograd, in C++ at the Autograd key (see core/autograd.h).
//
// pixel_fwd records PixelFwdBackward, whose first-order backward scales the gradient the forward
// wrote or calls pixel_bwd's kernel. pixel_bwd's own Autograd kernel serves the rest: when its
// inputs require grad (create_graph=True: double backward, and every torch.func.grad, which
// differentiates with create_graph) it computes the same gradients from differentiable ATen ops
// (the formulas of pixel/math.h), so that autograd records them: exact derivatives of any order,
// batched by vmap's own rules. Otherwise it is the kernel.
#include <torch/library.h>

#include "core/autograd.h"
#include "core/reduction.h"

namespace fastgenloss {
namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

using FwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&,
                                                  double, double, double, double, double, double,
                                                  double, double, int64_t, bool);
using BwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                          const OptTensor&, const Tensor&, const Tensor&, double,
                                          double, double, double, double, double, double, double,
                                          int64_t, bool, bool);

bool weighted_mean(int64_t reduction) {
  return reduction == kReduceWeightMean || reduction == kReduceMaskedMean;
}

// (l(d), dl/dd) from ATen ops, term by term as pixel/math.h. p: l1, mse, charbonnier, huber,
// smooth_l1, eps, delta, beta.
std::pair<Tensor, Tensor> pixel_terms(const Tensor& d, const double* p) {
  const double l1 = p[0], mse = p[1], charb = p[2], huber = p[3], sl1 = p[4], eps = p[5],
               delta = p[6], beta = p[7];
  const Tensor ad = d.abs();
  Tensor value = at::zeros_like(d), deriv = at::zeros_like(d);
  if (l1 != 0) {
    value = value + ad * l1;
    deriv = deriv + at::sign(d) * l1;
  }
  if (mse != 0) {
    value = value + d * d * mse;
    deriv = deriv + d * (2 * mse);
  }
  if (charb != 0) {
    const Tensor r = at::sqrt(d * d + eps * eps);
    value = value + r * charb;
    deriv = deriv + d / r * charb;
  }
  if (huber != 0) {
    value = value + at::where(ad < delta, d * d * 0.5, (ad - 0.5 * delta) * delta) * huber;
    deriv = deriv + at::clamp(d, -delta, delta) * huber;
  }
  if (sl1 != 0) {
    if (beta == 0) {
      value = value + ad * sl1;
      deriv = deriv + at::sign(d) * sl1;
    } else {
      value = value + at::where(ad < beta, d * d * (0.5 / beta), ad - 0.5 * beta) * sl1;
      deriv = deriv + at::where(ad < beta, d / beta, at::sign(d)) * sl1;
    }
  }
  return {value, deriv};
}

// pixel_bwd from differentiable ATen ops (its outputs' meaning: csrc/pixel/ops.cpp).
std::tuple<Tensor, Tensor> pixel_bwd_composite(
    const Tensor& grad_output, const Tensor& input, const Tensor& target, const OptTensor& weight,
    const Tensor& loss, const Tensor& wsum, const double* p, int64_t reduction, bool input_grad,
    bool weight_grad) {
  const auto [value, deriv] = pixel_terms(input - target, p);
  Tensor scale = grad_output;
  if (reduction == kReduceMean) {
    scale = grad_output / static_cast<double>(input.numel());
  } else if (weighted_mean(reduction)) {
    scale = grad_output / wsum;
    if (reduction == kReduceMaskedMean) scale = at::where(wsum == 0, at::zeros_like(scale), scale);
  }
  const bool has_weight = weight.has_value() && weight->defined();
  Tensor gi = at::empty({0}, input.options()), gw = at::empty({0}, input.options());
  if (input_grad) {
    gi = scale * deriv;
    if (has_weight) gi = gi * *weight;
    gi = gi.to(input.scalar_type());
  }
  if (weight_grad && has_weight) {
    gw = (scale * (weighted_mean(reduction) ? value - loss : value)).to(weight->scalar_type());
  }
  return {gi, gw};
}

// Edges: input, target, weight (empty without one). Gradients in: loss, weight_sum.
struct PixelFwdBackward final : LossNode {
  std::string name() const override { return "PixelFwdBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    target_.reset_data();
    weight_.reset_data();
    loss_.reset_data();
    wsum_.reset_data();
    release_grad_buffer();
  }
  variable_list apply(variable_list&& grads) override;

  SavedVariable input_, target_, weight_, loss_, wsum_;
  double p[8] = {};  // l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta
  int64_t reduction = 0;
  bool has_weight = false;
};

variable_list PixelFwdBackward::apply(variable_list&& grads) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Tensor& grad_loss = grads[0];
  const Tensor& grad_wsum = grads[1];
  const bool need_input = task_should_compute_output(0);
  const bool need_target = task_should_compute_output(1);
  const bool need_weight = has_weight && task_should_compute_output(2);
  variable_list out(3);
  const auto [buf, in_place] = take_grad_buffer();
  const Tensor weight = has_weight ? weight_.unpack() : Tensor();
  const Tensor wsum = wsum_.unpack(getptr());

  Tensor via_wsum;  // d loss / d weight through weight_sum: second derivatives need it
  if (grad_wsum.defined() && need_weight && weighted_mean(reduction)) {
    via_wsum = grad_wsum.to(weight.scalar_type()).expand(weight.sizes());
  }
  if (!grad_loss.defined()) {  // the loss took no part in what is being differentiated
    out[2] = via_wsum;
    return out;
  }
  const bool need_diff = need_input || need_target;
  Tensor grad_diff;  // d loss / d input; d / d target is its negation
  if (buf.defined() && need_diff) {
    Tensor scale = grad_loss;
    if (weighted_mean(reduction)) {
      scale = grad_loss.to(wsum.scalar_type()) / wsum;
      if (reduction == kReduceMaskedMean) {
        scale = at::where(wsum == 0, at::zeros_like(scale), scale);
      }
    }
    grad_diff = scaled_grad(buf, scale, in_place);
  }

  Tensor grad_weight;
  const bool op_diff = need_diff && !grad_diff.defined();
  if (op_diff || need_weight) {
    // Through pixel_bwd's autograd kernel when create_graph=True (see the top of this file).
    static const auto op = op_handle<BwdSig>("fastgenloss::pixel_bwd");
    const Tensor loss = loss_.unpack(getptr());
    const Tensor loss_arg = loss.defined() ? loss : at::empty({0}, wsum.options());
    const OptTensor w = has_weight ? OptTensor(weight) : std::nullopt;
    const Tensor input = input_.unpack(), target = target_.unpack();
    auto [gi, gw] = below_autograd_unless_grad([&] {
      return op.call(grad_loss, input, target, w, loss_arg, wsum, p[0], p[1], p[2], p[3], p[4],
                     p[5], p[6], p[7], reduction, op_diff, need_weight);
    });
    if (op_diff) grad_diff = gi;
    if (need_weight) grad_weight = gw;
  }
  if (via_wsum.defined()) {
    grad_weight = grad_weight.defined() ? grad_weight + via_wsum : via_wsum;
  }
  if (need_input) out[0] = grad_diff;
  if (need_target) out[1] = need_input ? -grad_diff : grad_diff.neg_();
  out[2] = grad_weight;
  return out;
}

std::tuple<Tensor, Tensor, Tensor> pixel_fwd_autograd(
    const Tensor& input, const Tensor& target, const OptTensor& weight, double l1, double mse,
    double charbonnier, double huber, double smooth_l1, double eps, double delta, double beta,
    int64_t reduction, bool write_grad) {
  static const auto op = op_handle<FwdSig>("fastgenloss::pixel_fwd");
  const Tensor w = weight.has_value() ? *weight : Tensor();
  auto node = make_node<PixelFwdBackward>("pixel_fwd", input, target, w);
  auto [loss, grad, wsum] = below_autograd([&] {
    return op.call(input, target, weight, l1, mse, charbonnier, huber, smooth_l1, eps, delta,
                   beta, reduction, write_grad);
  });
  if (node) {
    node->p[0] = l1, node->p[1] = mse, node->p[2] = charbonnier, node->p[3] = huber;
    node->p[4] = smooth_l1, node->p[5] = eps, node->p[6] = delta, node->p[7] = beta;
    node->reduction = reduction;
    node->has_weight = w.defined();
    node->input_ = SavedVariable(input, false);
    node->target_ = SavedVariable(target, false);
    if (w.defined()) node->weight_ = SavedVariable(w, false);
    // weight_sum stays differentiable (d sum(w) / dw = 1) for second derivatives through the
    // weight-normalized means; grad is a buffer, never differentiated.
    record_outputs(node, {loss, wsum});
    // The loss itself is only needed for d/dweight of the weight-normalized means (a scalar);
    // a reduction="none" output is never kept alive for backward.
    if (weighted_mean(reduction)) node->loss_ = SavedVariable(loss, true);
    node->wsum_ = SavedVariable(wsum, true);
    if (write_grad && reduction != kReduceNone) node->hold_grad_buffer(grad);
  }
  return {loss, grad, wsum};
}

std::tuple<Tensor, Tensor> pixel_bwd_autograd(
    const Tensor& grad_output, const Tensor& input, const Tensor& target, const OptTensor& weight,
    const Tensor& loss, const Tensor& weight_sum, double l1, double mse, double charbonnier,
    double huber, double smooth_l1, double eps, double delta, double beta, int64_t reduction,
    bool input_grad, bool weight_grad) {
  const Tensor w = weight.has_value() ? *weight : Tensor();
  TORCH_CHECK(!torch::autograd::isFwGradDefined(input) && !torch::autograd::isFwGradDefined(w),
              "fastgenloss::pixel_bwd: forward-mode AD is not implemented");
  if (torch::autograd::compute_requires_grad(grad_output, input, target, w, loss, weight_sum)) {
    const double p[8] = {l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta};
    return pixel_bwd_composite(grad_output, input, target, weight, loss, weight_sum, p,
                               reduction, input_grad, weight_grad);
  }
  static const auto op = op_handle<BwdSig>("fastgenloss::pixel_bwd");
  return below_autograd([&] {
    return op.call(grad_output, input, target, weight, loss, weight_sum, l1, mse, charbonnier,
                   huber, smooth_l1, eps, delta, beta, reduction, input_grad, weight_grad);
  });
}

}  // namespace
}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  m.impl("pixel_fwd", &fastgenloss::pixel_fwd_autograd);
  m.impl("pixel_bwd", &fastgenloss::pixel_bwd_autograd);
}
