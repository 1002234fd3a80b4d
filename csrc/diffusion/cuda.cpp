// CUDA implementations of the diffusion ops: checks, layouts and scratch here (g++), kernels in
// kernels.cu. Launches on torch's current stream; no host synchronization (a
// timestep outside the schedule, when the timesteps live on the GPU, gives that sample a NaN
// loss instead of an out-of-bounds read; the Python API checks CPU timesteps exactly).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "diffusion/launch.h"
#include "diffusion/ops.h"
#include "core/tensor_utils.h"

namespace fastgenloss {
namespace {

DiffusionLaunch make_launch(const DiffusionOperands& o, const DiffusionLossParams& p,
                            int64_t reduction) {
  return DiffusionLaunch{dtype_of(o.f.scalar_type()), o.n, o.m, o.f.const_data_ptr(),
                         o.use_sample ? o.x0.const_data_ptr() : nullptr,
                         o.use_noise ? o.e.const_data_ptr() : nullptr, o.sched.values(),
                         o.weight.has_value() ? o.weight->const_data_ptr() : nullptr, p, reduction};
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace

DiffusionFwdOut diffusion_fwd_cuda(const at::Tensor& model_output, const at::Tensor& sample,
                                   const at::Tensor& noise, const at::Tensor& t,
                                   const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& weight, int64_t schedule,
                                   int64_t prediction, int64_t weighting, int64_t loss_type,
                                   double snr_gamma, double huber_c, double sigma_data,
                                   int64_t reduction, bool write_grad) {
  const DiffusionLossParams p{schedule, prediction, weighting, loss_type, snr_gamma, huber_c, sigma_data};
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum,
              "fastgenloss::diffusion_fwd: unknown reduction code ", reduction);
  const c10::cuda::CUDAGuard guard(model_output.device());
  const DiffusionOperands o = diffusion_operands("fastgenloss::diffusion_fwd", model_output,
                                                 sample, noise, t, table, weight, p);
  const auto acc_opts = o.f.options().dtype(acc_scalar_type(o.f.scalar_type()));
  at::Tensor loss = reduction == kReduceNone ? at::empty({o.n}, acc_opts) : at::empty({}, acc_opts);
  at::Tensor sample_loss = at::empty({o.n}, acc_opts);
  const bool grad_out = write_grad && reduction != kReduceNone;
  at::Tensor grad = grad_out ? at::empty_like(o.f) : at::empty({0}, o.f.options());
  const int bps = diffusion_blocks_per_sample(o.n, o.m, model_output.device().index());
  at::Tensor scratch = at::empty({o.n * bps}, acc_opts);
  C10_CUDA_CHECK(launch_diffusion_fwd(make_launch(o, p, reduction), loss.mutable_data_ptr(),
                                      sample_loss.mutable_data_ptr(),
                                      grad_out ? grad.mutable_data_ptr() : nullptr,
                                      scratch.mutable_data_ptr(), bps, stream_of(o.f)));
  return {loss, sample_loss, grad};
}

DiffusionBwdOut diffusion_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& model_output,
                                   const at::Tensor& sample, const at::Tensor& noise,
                                   const at::Tensor& t, const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& weight, int64_t schedule,
                                   int64_t prediction, int64_t weighting, int64_t loss_type,
                                   double snr_gamma, double huber_c, double sigma_data,
                                   int64_t reduction, bool model_output_grad, bool sample_grad,
                                   bool noise_grad) {
  const DiffusionLossParams p{schedule, prediction, weighting, loss_type, snr_gamma, huber_c, sigma_data};
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum,
              "fastgenloss::diffusion_bwd: unknown reduction code ", reduction);
  const c10::cuda::CUDAGuard guard(model_output.device());
  const DiffusionOperands o = diffusion_operands("fastgenloss::diffusion_bwd", model_output,
                                                 sample, noise, t, table, weight, p);
  const at::Tensor go = diffusion_grad_output(grad_output, o, reduction);
  auto out = [&](bool want) { return want ? at::empty_like(o.f) : at::empty({0}, o.f.options()); };
  at::Tensor gf = out(model_output_grad), gx = out(sample_grad), ge = out(noise_grad);
  if (model_output_grad || sample_grad || noise_grad) {
    const int bps = diffusion_blocks_per_sample(o.n, o.m, model_output.device().index());
    C10_CUDA_CHECK(launch_diffusion_bwd(
        make_launch(o, p, reduction), go.const_data_ptr(),
        model_output_grad ? gf.mutable_data_ptr() : nullptr,
        sample_grad ? gx.mutable_data_ptr() : nullptr, noise_grad ? ge.mutable_data_ptr() : nullptr,
        bps, stream_of(o.f)));
  }
  return {gf, gx, ge};
}

at::Tensor diffusion_mix_cuda(const at::Tensor& sample, const at::Tensor& noise,
                              const at::Tensor& t, const std::optional<at::Tensor>& table,
                              int64_t kind) {
  const c10::cuda::CUDAGuard guard(sample.device());
  const auto [x, y] = mix_operands("fastgenloss::diffusion_mix", sample, noise, kind);
  const ScheduleOperands sched = schedule_operands("fastgenloss::diffusion_mix", t, table,
                                                   mix_schedule(kind), x.size(0), x.device());
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.size(0), m = n > 0 ? x.numel() / n : 0;
  const MixLaunch a{dtype_of(x.scalar_type()), n, m, x.const_data_ptr(), y.const_data_ptr(),
                    sched.values(), kind};
  C10_CUDA_CHECK(launch_diffusion_mix(a, out.mutable_data_ptr(),
                                      diffusion_blocks_per_sample(n, m, x.device().index()),
                                      stream_of(x)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> diffusion_mix_bwd_cuda(const at::Tensor& grad,
                                                          const at::Tensor& t,
                                                          const std::optional<at::Tensor>& table,
                                                          int64_t kind, bool sample_grad,
                                                          bool noise_grad) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = std::get<0>(mix_operands("fastgenloss::diffusion_mix_bwd", grad, grad, kind));
  const ScheduleOperands sched = schedule_operands("fastgenloss::diffusion_mix_bwd", t, table,
                                                   mix_schedule(kind), g.size(0), g.device());
  at::Tensor gs = sample_grad ? at::empty_like(g) : at::empty({0}, g.options());
  at::Tensor gn = noise_grad ? at::empty_like(g) : at::empty({0}, g.options());
  const int64_t n = g.size(0), m = n > 0 ? g.numel() / n : 0;
  const MixLaunch a{dtype_of(g.scalar_type()), n, m, g.const_data_ptr(), nullptr,
                    sched.values(), kind};
  C10_CUDA_CHECK(launch_diffusion_mix_bwd(a, sample_grad ? gs.mutable_data_ptr() : nullptr,
                                          noise_grad ? gn.mutable_data_ptr() : nullptr,
                                          diffusion_blocks_per_sample(n, m, g.device().index()),
                                          stream_of(g)));
  return {gs, gn};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CUDA, m) {
  m.impl("diffusion_fwd", &fastgenloss::diffusion_fwd_cuda);
  m.impl("diffusion_bwd", &fastgenloss::diffusion_bwd_cuda);
  m.impl("diffusion_mix", &fastgenloss::diffusion_mix_cuda);
  m.impl("diffusion_mix_bwd", &fastgenloss::diffusion_mix_bwd_cuda);
}
