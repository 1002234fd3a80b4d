// Tensor-level declarations shared by the CPU and CUDA implementations of the diffusion ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "core/tensor_utils.h"
#include "diffusion/math.h"

namespace fastgenloss {

// The per-sample schedule tensors, checked and on the device of the data, in kernel dtypes.
struct ScheduleOperands {
  at::Tensor t;      // timesteps (int32/int64) or sigmas (float/double), [N], contiguous
  at::Tensor table;  // alphas_cumprod (float/double), contiguous; undefined for sigmas
  int64_t schedule;
  DiffusionValues values() const;
};

ScheduleOperands schedule_operands(const char* op, const at::Tensor& t,
                                   const std::optional<at::Tensor>& table, int64_t schedule,
                                   int64_t n_samples, const at::Device& device);

// `x` when it is contiguous, channels_last or channels_last_3d (batch dim outermost, the rest
// dense: sample n's elements are [n*M, (n+1)*M) of its storage), otherwise a contiguous copy.
// The fake kernels (python/fastgenloss/diffusion/_ops.py) lay out their outputs by the same rule.
at::Tensor sample_major(const at::Tensor& x);

struct DiffusionOperands {
  at::Tensor f, x0, e;  // model_output, sample, noise: one dtype, one sample-major layout
  ScheduleOperands sched;
  std::optional<at::Tensor> weight;  // [N], accumulation dtype, contiguous, on the device
  int64_t n = 0, m = 0;
  bool use_sample = true, use_noise = true;  // false: the loss does not depend on it
};

DiffusionOperands diffusion_operands(const char* op, const at::Tensor& model_output,
                                     const at::Tensor& sample, const at::Tensor& noise,
                                     const at::Tensor& t, const std::optional<at::Tensor>& table,
                                     const std::optional<at::Tensor>& weight,
                                     const DiffusionLossParams& p);

// grad_output of diffusion_bwd: 1 element (mean, sum) or [N] (none), accumulation dtype.
at::Tensor diffusion_grad_output(const at::Tensor& grad_output, const DiffusionOperands& o,
                                 int64_t reduction);

// Checks shared by the mix ops; returns (sample, noise) sample-major and in one layout.
std::tuple<at::Tensor, at::Tensor> mix_operands(const char* op, const at::Tensor& sample,
                                                const at::Tensor& noise, int64_t kind);
int64_t mix_schedule(int64_t kind);

using DiffusionFwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using DiffusionBwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

DiffusionFwdOut diffusion_fwd_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                                  const at::Tensor& noise, const at::Tensor& t,
                                  const std::optional<at::Tensor>& table,
                                  const std::optional<at::Tensor>& weight, int64_t schedule,
                                  int64_t prediction, int64_t weighting, int64_t loss_type,
                                  double snr_gamma, double huber_c, double sigma_data,
                                  int64_t reduction, bool write_grad);
DiffusionBwdOut diffusion_bwd_cpu(const at::Tensor& grad_output, const at::Tensor& model_output,
                                  const at::Tensor& sample, const at::Tensor& noise,
                                  const at::Tensor& t, const std::optional<at::Tensor>& table,
                                  const std::optional<at::Tensor>& weight, int64_t schedule,
                                  int64_t prediction, int64_t weighting, int64_t loss_type,
                                  double snr_gamma, double huber_c, double sigma_data,
                                  int64_t reduction, bool model_output_grad, bool sample_grad,
                                  bool noise_grad);
at::Tensor diffusion_mix_cpu(const at::Tensor& sample, const at::Tensor& noise,
                             const at::Tensor& t, const std::optional<at::Tensor>& table,
                             int64_t kind);
std::tuple<at::Tensor, at::Tensor> diffusion_mix_bwd_cpu(const at::Tensor& grad,
                                                         const at::Tensor& t,
                                                         const std::optional<at::Tensor>& table,
                                                         int64_t kind, bool sample_grad,
                                                         bool noise_grad);

}  // namespace fastgenloss
