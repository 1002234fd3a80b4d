// CUDA implementations of the pixel ops: tensor checks, layouts and scratch here (g++), the
// kernels in kernels.cu. Every entry point guards the device and launches on torch's
// current stream; no host synchronization.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pixel/launch.h"
#include "pixel/ops.h"
#include "core/tensor_utils.h"

namespace fastgenloss {
namespace {


PixelLaunch make_launch(const PixelOperands& o, const PixelParams& p) {
  return PixelLaunch{dtype_of(o.x.scalar_type()), o.x.numel(), o.x.const_data_ptr(),
                     o.y.const_data_ptr(), o.w.has_value() ? o.w->const_data_ptr() : nullptr,
                     o.windex.has_value(), o.windex.value_or(WeightIndex{}),
                     p.l1, p.mse, p.charbonnier, p.huber, p.smooth_l1, p.eps, p.delta, p.beta,
                     p.reduction};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_fwd_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool write_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  const PixelOperands o = pixel_operands("fastgenloss::pixel_fwd", input, target, weight, p);
  const at::Tensor& x = o.x;
  const bool weighted_mean = reduction == kReduceWeightMean || reduction == kReduceMaskedMean;
  const auto acc_dtype = acc_scalar_type(input.scalar_type());
  const PixelLaunch a = make_launch(o, p);

  at::Tensor loss, grad = at::empty({0}, input.options());
  at::Tensor wsum = at::empty(weighted_mean ? at::IntArrayRef{} : at::IntArrayRef{0},
                              input.options().dtype(acc_dtype));
  if (reduction == kReduceNone) {
    loss = at::empty_like(x);
    C10_CUDA_CHECK(launch_pixel_fwd_none(a, loss.mutable_data_ptr(), stream));
  } else {
    loss = at::empty({}, input.options());
    if (write_grad) grad = at::empty_like(x);
    const int grid = pixel_reduce_grid(x.numel(), input.device().index());
    at::Tensor scratch = at::empty({2 * int64_t(grid)}, input.options().dtype(acc_dtype));
    C10_CUDA_CHECK(launch_pixel_fwd_reduce(a, loss.mutable_data_ptr(),
                                         weighted_mean ? wsum.mutable_data_ptr() : nullptr,
                                         write_grad ? grad.mutable_data_ptr() : nullptr,
                                         scratch.mutable_data_ptr(), grid, stream));
  }
  return {loss, grad, wsum};
}

std::tuple<at::Tensor, at::Tensor> pixel_bwd_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& loss, const at::Tensor& weight_sum,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool input_grad, bool weight_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  TORCH_CHECK(!weight_grad || weight.has_value(), "fastgenloss::pixel_bwd: weight_grad needs a weight");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  const PixelOperands o = pixel_operands("fastgenloss::pixel_bwd", input, target, weight, p);
  const at::Tensor& x = o.x;
  const at::Tensor go = pixel_grad_output(grad_output, input, x, reduction);
  const bool weighted_mean = reduction == kReduceWeightMean || reduction == kReduceMaskedMean;
  at::Tensor gi = input_grad ? at::empty_like(x) : at::empty({0}, input.options());
  at::Tensor gw = weight_grad ? at::empty_like(x) : at::empty({0}, input.options());
  if (input_grad || weight_grad) {
    const PixelLaunch a = make_launch(o, p);
    C10_CUDA_CHECK(launch_pixel_bwd(a, go.const_data_ptr(), go.numel() == 1, weighted_mean ? loss.const_data_ptr() : nullptr,
                                  weighted_mean ? weight_sum.const_data_ptr() : nullptr,
                                  input_grad ? gi.mutable_data_ptr() : nullptr,
                                  weight_grad ? gw.mutable_data_ptr() : nullptr, stream));
  }
  return {gi, gw};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CUDA, m) {
  m.impl("pixel_fwd", &fastgenloss::pixel_fwd_cuda);
  m.impl("pixel_bwd", &fastgenloss::pixel_bwd_cuda);
}
