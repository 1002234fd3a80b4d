// The diffusion ops' autograd, in C++ at the Autograd key (see core/autograd.h).
//
// diffusion_fwd records DiffusionFwdBackward: the first backward scales the model_output
// gradient the forward wrote; the sample / noise gradients (and a second backward) come from
// diffusion_bwd, which is differentiated no further (second derivatives raise).
#include <torch/library.h>

#include "core/autograd.h"
#include "core/reduction.h"

namespace fastgenloss {
namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

using FwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const OptTensor&,
                                                  const OptTensor&, int64_t, int64_t, int64_t,
                                                  int64_t, double, double, double, int64_t, bool);
using BwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const Tensor&, const OptTensor&,
                                                  const OptTensor&, int64_t, int64_t, int64_t,
                                                  int64_t, double, double, double, int64_t, bool,
                                                  bool, bool);

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Edges: model_output, sample, noise, t, table, weight (empty when absent). Gradient in: loss.
struct DiffusionFwdBackward final : LossNode {
  std::string name() const override { return "DiffusionFwdBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto* v : {&f_, &x_, &e_, &t_, &table_, &weight_, &sample_loss_}) v->reset_data();
    release_grad_buffer();
  }
  variable_list apply(variable_list&& grads) override;

  SavedVariable f_, x_, e_, t_, table_, weight_, sample_loss_;
  int64_t schedule = 0, prediction = 0, weighting = 0, loss_type = 0, reduction = 0;
  double snr_gamma = 0, huber_c = 0, sigma_data = 0;
};

variable_list DiffusionFwdBackward::apply(variable_list&& grads) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Tensor& grad_loss = grads[0];
  variable_list out(6);
  const auto [buf, in_place] = take_grad_buffer();
  if (!grad_loss.defined()) return out;
  const bool need_f = task_should_compute_output(0);
  const bool need_x = task_should_compute_output(1);
  const bool need_e = task_should_compute_output(2);
  const Tensor weight = weight_.unpack();
  const bool need_w = weight.defined() && task_should_compute_output(5);

  Tensor gf, gx, ge;
  if (buf.defined() && need_f) gf = scaled_grad(buf, grad_loss, in_place);
  const bool op_f = need_f && !gf.defined();
  if (op_f || need_x || need_e) {
    static const auto op = op_handle<BwdSig>("fastgenloss::diffusion_bwd");
    const Tensor f = f_.unpack(), x = x_.unpack(), e = e_.unpack(), t = t_.unpack();
    const Tensor table = table_.unpack();
    auto [f_grad, x_grad, e_grad] = below_autograd_unless_grad([&] {
      return op.call(grad_loss, f, x, e, t, opt(table), opt(weight), schedule, prediction,
                     weighting, loss_type, snr_gamma, huber_c, sigma_data, reduction, op_f,
                     need_x, need_e);
    });
    if (op_f) gf = f_grad;
    if (need_x) gx = x_grad;
    if (need_e) ge = e_grad;
  }
  Tensor gw;
  if (need_w) {  // loss = sum_n weight_n * sample_loss_n (/ N for the mean)
    const Tensor sample_loss = sample_loss_.unpack();
    gw = grad_loss * sample_loss;
    if (reduction == kReduceMean) gw = gw / static_cast<double>(sample_loss.size(0));
    gw = gw.to(weight.scalar_type());
  }
  out[0] = gf, out[1] = gx, out[2] = ge, out[5] = gw;
  return out;
}

std::tuple<Tensor, Tensor, Tensor> diffusion_fwd_autograd(
    const Tensor& model_output, const Tensor& sample, const Tensor& noise, const Tensor& t,
    const OptTensor& table, const OptTensor& weight, int64_t schedule, int64_t prediction,
    int64_t weighting, int64_t loss_type, double snr_gamma, double huber_c, double sigma_data,
    int64_t reduction, bool write_grad) {
  static const auto op = op_handle<FwdSig>("fastgenloss::diffusion_fwd");
  const Tensor tab = table.value_or(Tensor()), w = weight.value_or(Tensor());
  auto node = make_node<DiffusionFwdBackward>("diffusion_fwd", model_output, sample, noise, t,
                                              tab, w);
  auto [loss, sample_loss, grad] = below_autograd([&] {
    return op.call(model_output, sample, noise, t, table, weight, schedule, prediction, weighting,
                   loss_type, snr_gamma, huber_c, sigma_data, reduction, write_grad);
  });
  if (node) {
    node->schedule = schedule, node->prediction = prediction, node->weighting = weighting;
    node->loss_type = loss_type, node->reduction = reduction;
    node->snr_gamma = snr_gamma, node->huber_c = huber_c, node->sigma_data = sigma_data;
    node->f_ = SavedVariable(model_output, false);
    node->x_ = SavedVariable(sample, false);
    node->e_ = SavedVariable(noise, false);
    node->t_ = SavedVariable(t, false);
    if (tab.defined()) node->table_ = SavedVariable(tab, false);
    if (w.defined()) {
      node->weight_ = SavedVariable(w, false);
      node->sample_loss_ = SavedVariable(sample_loss, false);  // no history: not an output edge
    }
    record_outputs(node, {loss});  // sample_loss and grad are not differentiable
    if (write_grad && reduction != kReduceNone) node->hold_grad_buffer(grad);
  }
  return {loss, sample_loss, grad};
}

}  // namespace
}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  m.impl("diffusion_fwd", &fastgenloss::diffusion_fwd_autograd);
  m.impl("diffusion_bwd",
         fastgenloss::first_order_only(
             "fastgenloss: second derivatives of the diffusion losses are not implemented "
             "(differentiate the loss once, without create_graph=True)"));
}
