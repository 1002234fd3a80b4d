// The pixel_fwd / pixel_bwd ops on the CPU: operands, outputs, and the dispatch on the dtype to
// the kernels (cpu_kernels.h, compiled per dtype in generated translation units).
//
// Forward (scalar reduction): one pass reads input, target (and weight) once and, when asked,
// writes the input gradient in the same pass: 2-3 reads + 0-1 write per element, ~10 flops.
// Work is split into fixed blocks of elements whose partial sums are added in block order, so
// the result has the same bits for any thread count. Half and bfloat16 accumulate in float;
// block partials are added in double.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Dispatch.h>

#include "pixel/cpu.h"

namespace fastgenloss {
namespace {

at::Tensor empty0(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_fwd_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool write_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  const PixelOperands o = pixel_operands("fastgenloss::pixel_fwd", input, target, weight, p);
  const at::Tensor& x = o.x;
  const bool weighted_mean = reduction == kReduceWeightMean || reduction == kReduceMaskedMean;
  const auto acc_dtype = acc_scalar_type(input.scalar_type());

  at::Tensor loss, grad = empty0(input);
  at::Tensor wsum = weighted_mean ? at::empty({}, input.options().dtype(acc_dtype))
                                  : at::empty({0}, input.options().dtype(acc_dtype));
  if (reduction == kReduceNone) {
    loss = empty_like_output(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_fwd_cpu", [&] {
      pixel_cpu::fwd_none<scalar_t>(o, p, loss);
    });
  } else {
    loss = at::empty({}, input.options());
    if (write_grad) grad = empty_like_output(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_fwd_cpu", [&] {
      pixel_cpu::fwd_reduce<scalar_t>(o, write_grad ? &grad : nullptr, p, loss,
                                      weighted_mean ? &wsum : nullptr);
    });
  }
  return {loss, grad, wsum};
}

std::tuple<at::Tensor, at::Tensor> pixel_bwd_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& loss, const at::Tensor& weight_sum,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool input_grad, bool weight_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  TORCH_CHECK(!weight_grad || weight.has_value(), "fastgenloss::pixel_bwd: weight_grad needs a weight");
  const PixelOperands o = pixel_operands("fastgenloss::pixel_bwd", input, target, weight, p);
  const at::Tensor& x = o.x;
  const at::Tensor go = pixel_grad_output(grad_output, input, x, reduction);
  at::Tensor gi = input_grad ? empty_like_output(x) : empty0(input);
  at::Tensor gw = weight_grad ? empty_like_output(x) : empty0(input);
  if (x.numel() > 0 && (input_grad || weight_grad)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_bwd_cpu", [&] {
      pixel_cpu::bwd<scalar_t>(go, o, loss, weight_sum, p, input_grad ? &gi : nullptr,
                              weight_grad ? &gw : nullptr);
    });
  }
  return {gi, gw};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("pixel_fwd", &fastgenloss::pixel_fwd_cpu);
  m.impl("pixel_bwd", &fastgenloss::pixel_bwd_cpu);
}
