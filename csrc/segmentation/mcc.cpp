// The MCC loss's statistics on probabilities (smp's MCCLoss): one pass for the three sums,
//   mcc_stats(input, target) -> [sum p, sum t, sum p t] (accumulation dtype),
// and one for the gradient,
//   mcc_stats_bwd(grad [3], input, target, input_grad, target_grad)
//     -> (grad[0] + grad[2] t, grad[1] + grad[2] p), each [0] when not asked for.
// The loss itself is a few scalar ops on the sums (Python, segmentation/functional.py).
//
// CPU: fixed blocks of elements summed in float (double for double) as SIMD reductions, block
// partials added in double in block order: the same bits for any thread count. Other devices (CUDA): ATen reductions. The backward's Autograd kernel computes
// the same gradients from ATen ops when they are to be differentiated (create_graph).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "core/autograd.h"
#include "core/cpu_simd.h"
#include "core/tensor_utils.h"

namespace fastgenloss {
namespace {

using Tensor = at::Tensor;
constexpr const char* kOp = "fastgenloss::mcc_stats";
constexpr int64_t kBlock = 1 << 14;

void check(const Tensor& input, const Tensor& target) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), kOp,
              ": input must be floating probabilities, got ", input.scalar_type());
  TORCH_CHECK(target.scalar_type() == input.scalar_type() && target.sizes() == input.sizes() &&
                  target.device() == input.device(),
              kOp, ": target must have input's shape, dtype and device ", input.sizes(), " ",
              input.scalar_type(), ", got ", target.sizes(), " ", target.scalar_type(), " on ",
              target.device());
}

template <typename scalar_t>
FGL_CPU_MULTIVERSION void block_sums(const scalar_t* __restrict__ p,
                                     const scalar_t* __restrict__ t, int64_t n, double out[3]) {
  using acc_t = acc_type_t<scalar_t>;
  acc_t sp = 0, st = 0, spt = 0;
  // a SIMD reduction: the lanes' order is fixed for the ISA, so the bits do not depend on the
  // thread count
#pragma omp simd reduction(+ : sp, st, spt)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = acc_t(p[i]), b = acc_t(t[i]);
    sp += a;
    st += b;
    spt += a * b;
  }
  out[0] = double(sp);
  out[1] = double(st);
  out[2] = double(spt);
}

Tensor mcc_stats_cpu(const Tensor& input, const Tensor& target) {
  check(input, target);
  const Tensor p = input.contiguous(), t = target.contiguous();
  const int64_t n = p.numel(), blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(3 * blocks, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mcc_stats_cpu", [&] {
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t start = k * kBlock;
        block_sums(pp + start, tp + start, std::min(kBlock, n - start), &part[3 * k]);
      }
    });
  });
  double sums[3] = {0.0, 0.0, 0.0};
  for (int64_t k = 0; k < blocks; ++k) {
    for (int j = 0; j < 3; ++j) sums[j] += part[3 * k + j];
  }
  const auto acc = acc_scalar_type(p.scalar_type());
  return at::tensor({sums[0], sums[1], sums[2]}, at::TensorOptions().dtype(at::kDouble)).to(acc);
}

Tensor mcc_stats_aten(const Tensor& input, const Tensor& target) {
  check(input, target);
  const auto acc = acc_scalar_type(input.scalar_type());
  const Tensor p = input.reshape(-1).to(acc), t = target.reshape(-1).to(acc);
  return at::stack({p.sum(), t.sum(), at::dot(p, t)});
}

// out[i] = a + b * v[i]
template <typename scalar_t>
FGL_CPU_MULTIVERSION void affine(const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                                 int64_t n, acc_type_t<scalar_t> a, acc_type_t<scalar_t> b) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) out[i] = scalar_t(a + b * acc_t(v[i]));
}

// grad[0] + grad[2] * t and grad[1] + grad[2] * p, in one pass each.
std::tuple<Tensor, Tensor> mcc_stats_bwd_cpu(const Tensor& grad, const Tensor& input,
                                             const Tensor& target, bool input_grad,
                                             bool target_grad) {
  check(input, target);
  TORCH_CHECK(grad.numel() == 3, kOp, "_bwd: grad must hold 3 values, got ", grad.sizes());
  const Tensor p = input.contiguous(), t = target.contiguous();
  const Tensor g = grad.to(at::kDouble).contiguous();
  const double* gv = g.const_data_ptr<double>();
  Tensor gp = input_grad ? at::empty_like(p) : at::empty({0}, p.options());
  Tensor gt = target_grad ? at::empty_like(t) : at::empty({0}, t.options());
  const int64_t n = p.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mcc_bwd_cpu", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const acc_t g0 = acc_t(gv[0]), g1 = acc_t(gv[1]), g2 = acc_t(gv[2]);
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* op = input_grad ? gp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* ot = target_grad ? gt.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kBlock, [&](int64_t b, int64_t e) {
      if (op != nullptr) affine(tp + b, op + b, e - b, g0, g2);
      if (ot != nullptr) affine(pp + b, ot + b, e - b, g1, g2);
    });
  });
  return {gp, gt};
}

std::tuple<Tensor, Tensor> mcc_stats_bwd_composite(const Tensor& grad, const Tensor& input,
                                                   const Tensor& target, bool input_grad,
                                                   bool target_grad) {
  const auto acc = acc_scalar_type(input.scalar_type());
  const Tensor g = grad.to(acc);
  Tensor gp = at::empty({0}, input.options()), gt = at::empty({0}, target.options());
  if (input_grad) gp = (g[0] + g[2] * target.to(acc)).to(input.scalar_type());
  if (target_grad) gt = (g[1] + g[2] * input.to(acc)).to(target.scalar_type());
  return {gp, gt};
}

// ---- autograd ------------------------------------------------------------------------------

using FwdSig = Tensor(const Tensor&, const Tensor&);
using BwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool,
                                          bool);

// Edges: input, target. Gradient in: the three sums.
struct MccStatsBackward final : LossNode {
  std::string name() const override { return "MccStatsBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    target_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    const bool need_p = task_should_compute_output(0), need_t = task_should_compute_output(1);
    if (!grads[0].defined() || !(need_p || need_t)) return out;
    static const auto op = op_handle<BwdSig>("fastgenloss::mcc_stats_bwd");
    const Tensor input = input_.unpack(), target = target_.unpack();
    auto [gp, gt] = below_autograd_unless_grad(
        [&] { return op.call(grads[0], input, target, need_p, need_t); });
    if (need_p) out[0] = gp;
    if (need_t) out[1] = gt;
    return out;
  }
  SavedVariable input_, target_;
};

Tensor mcc_stats_autograd(const Tensor& input, const Tensor& target) {
  static const auto op = op_handle<FwdSig>("fastgenloss::mcc_stats");
  auto node = make_node<MccStatsBackward>("mcc_stats", input, target);
  Tensor sums = below_autograd([&] { return op.call(input, target); });
  if (node) {
    node->input_ = SavedVariable(input, false);
    node->target_ = SavedVariable(target, false);
    record_outputs(node, {sums});
  }
  return sums;
}

std::tuple<Tensor, Tensor> mcc_stats_bwd_autograd(const Tensor& grad, const Tensor& input,
                                                  const Tensor& target, bool input_grad,
                                                  bool target_grad) {
  if (torch::autograd::compute_requires_grad(grad, input, target)) {  // create_graph
    return mcc_stats_bwd_composite(grad, input, target, input_grad, target_grad);
  }
  static const auto op = op_handle<BwdSig>("fastgenloss::mcc_stats_bwd");
  return below_autograd([&] { return op.call(grad, input, target, input_grad, target_grad); });
}

}  // namespace
}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("mcc_stats", &fastgenloss::mcc_stats_cpu);
  m.impl("mcc_stats_bwd", &fastgenloss::mcc_stats_bwd_cpu);
}

TORCH_LIBRARY_IMPL(fastgenloss, CUDA, m) {
  m.impl("mcc_stats", &fastgenloss::mcc_stats_aten);
  m.impl("mcc_stats_bwd", &fastgenloss::mcc_stats_bwd_composite);
}

TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  m.impl("mcc_stats", &fastgenloss::mcc_stats_autograd);
  m.impl("mcc_stats_bwd", &fastgenloss::mcc_stats_bwd_autograd);
}
