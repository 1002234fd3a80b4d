// Argument checks and operand preparation of the diffusion ops, shared by both backends.
// These are backstops for direct op calls: the Python API checks first, with its own names.
#include <torch/library.h>

#include <ATen/ATen.h>

#include "diffusion/ops.h"
#include "core/host_memory.h"

namespace fastgenloss {

DiffusionValues ScheduleOperands::values() const {
  DiffusionValues v{};
  v.schedule = schedule;
  v.t = t.const_data_ptr();
  if (schedule == kSchedAlphasCumprod) {
    v.t_type = t.scalar_type() == at::kLong ? kIdxInt64 : kIdxInt32;
    v.table = table.const_data_ptr();
    v.table_type = table.scalar_type() == at::kDouble ? kIdxDouble : kIdxFloat;
    v.table_len = table.numel();
  } else {
    v.t_type = t.scalar_type() == at::kDouble ? kIdxDouble : kIdxFloat;
  }
  return v;
}

ScheduleOperands schedule_operands(const char* op, const at::Tensor& t,
                                   const std::optional<at::Tensor>& table, int64_t schedule,
                                   int64_t n_samples, const at::Device& device) {
  TORCH_CHECK(schedule >= kSchedAlphasCumprod && schedule <= kSchedEDM, op,
              ": unknown schedule code ", schedule);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n_samples, op, ": timesteps/sigmas must have shape [",
              n_samples, "] (one per sample), got ", t.sizes());
  TORCH_CHECK(t.device() == device || t.device().is_cpu(), op, ": timesteps/sigmas are on ",
              t.device(), " but the data is on ", device);
  ScheduleOperands s{at::Tensor(), at::Tensor(), schedule};
  if (schedule == kSchedAlphasCumprod) {
    TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) &&
                    t.scalar_type() != at::kBool, op, ": timesteps must be an integer tensor, got ",
                t.scalar_type());
    TORCH_CHECK(table.has_value() && table->dim() == 1 && table->numel() > 0 &&
                    at::isFloatingType(table->scalar_type()),
                op, ": alphas_cumprod must be a non-empty 1-D floating tensor");
    TORCH_CHECK(table->device() == device || table->device().is_cpu(), op,
                ": alphas_cumprod is on ", table->device(), " but the data is on ", device);
    if (t.device().is_cpu() && t.numel() > 0) {  // exact check, no device synchronization
      const auto mm = at::aminmax(t);
      const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < table->numel(), op, ": timesteps must lie in [0, ",
                  table->numel(), "), got values in [", lo, ", ", hi, "]");
    }
    const auto ttype = t.scalar_type() == at::kInt ? at::kInt : at::kLong;
    s.t = t.to(device, ttype).contiguous();
    const auto tabtype = acc_scalar_type(table->scalar_type());
    s.table = table->to(device, tabtype).contiguous();
  } else {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": sigmas must be a floating tensor, got ",
                t.scalar_type());
    const auto ttype = acc_scalar_type(t.scalar_type());
    s.t = t.to(device, ttype).contiguous();
  }
  return s;
}

at::Tensor sample_major(const at::Tensor& x) {
  if (x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
      (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))) {
    return x;
  }
  return x.contiguous();
}


namespace {

void check_data(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " differs from model_output's ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " ", t.sizes(),
              " and model_output ", ref.sizes(), " must have the same shape");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but model_output is on ", ref.device());
}

}  // namespace

DiffusionOperands diffusion_operands(const char* op, const at::Tensor& model_output,
                                     const at::Tensor& sample, const at::Tensor& noise,
                                     const at::Tensor& t, const std::optional<at::Tensor>& table,
                                     const std::optional<at::Tensor>& weight,
                                     const DiffusionLossParams& p) {
  const auto dt = model_output.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              op, ": model_output must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(model_output.dim() >= 1, op, ": model_output must have a batch dim, got shape ",
              model_output.sizes());
  check_data(op, "sample", sample, model_output);
  check_data(op, "noise", noise, model_output);
  TORCH_CHECK(p.prediction >= kPredEpsilon && p.prediction <= kPredFlow, op,
              ": unknown prediction code ", p.prediction);
  TORCH_CHECK(p.weighting >= kWeightNone && p.weighting <= kWeightEdm, op,
              ": unknown weighting code ", p.weighting);
  TORCH_CHECK(p.loss_type >= kLossL2 && p.loss_type <= kLossPseudoHuber, op,
              ": unknown loss_type code ", p.loss_type);
  TORCH_CHECK(p.loss_type == kLossL2 || p.loss_type == kLossL1 || p.huber_c > 0.0, op,
              ": huber_c must be > 0, got ", p.huber_c);
  TORCH_CHECK(std::isfinite(p.snr_gamma) && p.snr_gamma > 0.0, op,
              ": snr_gamma must be finite and > 0, got ", p.snr_gamma);
  TORCH_CHECK(std::isfinite(p.sigma_data) && p.sigma_data > 0.0, op,
              ": sigma_data must be finite and > 0, got ", p.sigma_data);
  DiffusionOperands o;
  o.n = model_output.size(0);
  o.m = o.n > 0 ? model_output.numel() / o.n : 0;
  if (o.n == 0) {  // m is the product of the non-batch dims even with no sample
    o.m = 1;
    for (int64_t d = 1; d < model_output.dim(); ++d) o.m *= model_output.size(d);
  }
  o.sched = schedule_operands(op, t, table, p.schedule, o.n, model_output.device());
  o.use_sample = !(p.schedule == kSchedAlphasCumprod && p.prediction == kPredEpsilon);
  o.use_noise = !(p.schedule == kSchedAlphasCumprod && p.prediction == kPredSample);
  o.f = sample_major(model_output);
  o.x0 = match_layout(sample, o.f);
  o.e = match_layout(noise, o.f);
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == o.n && at::isFloatingType(weight->scalar_type()),
                op, ": weight must be a floating tensor of shape [", o.n, "], got ",
                weight->scalar_type(), " ", weight->sizes());
    TORCH_CHECK(weight->device() == model_output.device(), op, ": weight is on ",
                weight->device(), " but model_output is on ", model_output.device());
    o.weight = weight->to(acc_scalar_type(dt)).contiguous();
  }
  return o;
}

at::Tensor diffusion_grad_output(const at::Tensor& grad_output, const DiffusionOperands& o,
                                 int64_t reduction) {
  const auto acc = acc_scalar_type(o.f.scalar_type());
  TORCH_CHECK(grad_output.device() == o.f.device(), "fastgenloss::diffusion_bwd: grad_output is on ",
              grad_output.device(), " but model_output is on ", o.f.device());
  if (reduction == kReduceNone) {
    TORCH_CHECK(grad_output.dim() == 1 && grad_output.size(0) == o.n,
                "fastgenloss::diffusion_bwd: grad_output must have shape [", o.n, "], got ",
                grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "fastgenloss::diffusion_bwd: grad_output must be a ",
                "scalar, got ", grad_output.sizes());
  }
  return grad_output.to(acc).contiguous();
}

int64_t mix_schedule(int64_t kind) {
  TORCH_CHECK(kind >= kMixAddNoise && kind <= kMixEdm, "fastgenloss::diffusion_mix: unknown kind ",
              kind);
  if (kind == kMixFlow) return kSchedFlow;
  if (kind == kMixEdm) return kSchedEDM;
  return kSchedAlphasCumprod;
}

std::tuple<at::Tensor, at::Tensor> mix_operands(const char* op, const at::Tensor& sample,
                                                const at::Tensor& noise, int64_t kind) {
  mix_schedule(kind);
  const auto dt = sample.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              op, ": sample must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(sample.dim() >= 1, op, ": sample must have a batch dim, got shape ", sample.sizes());
  TORCH_CHECK(noise.scalar_type() == dt && noise.sizes() == sample.sizes() &&
                  noise.device() == sample.device(),
              op, ": noise (", noise.scalar_type(), " ", noise.sizes(), " on ", noise.device(),
              ") must match sample (", dt, " ", sample.sizes(), " on ", sample.device(), ")");
  at::Tensor x = sample_major(sample);
  return {x, match_layout(noise, x)};
}

}  // namespace fastgenloss

TORCH_LIBRARY_FRAGMENT(fastgenloss, m) {
  // The codes of the int arguments are diffusion/math.h's.
  // diffusion_fwd -> (loss, sample_loss, grad)
  //   loss: [] (mean, sum) or [N] (none), float32 (float64 for float64 data);
  //   sample_loss: [N] w_n * mean_j rho, the per-sample loss before the caller's weight (the
  //                gradient of that weight needs it);
  //   grad: when write_grad and the reduction is scalar, d loss / d model_output for
  //         grad_output = 1, laid out like model_output (donated to backward, as pixel_fwd's);
  //         otherwise an empty [0] tensor.
  // diffusion_bwd -> (grad_model_output, grad_sample, grad_noise), each [0] when not asked for.
  m.def(
      "diffusion_fwd(Tensor model_output, Tensor sample, Tensor noise, Tensor t, Tensor? table, "
      "Tensor? weight, int schedule, int prediction, int weighting, int loss_type, "
      "float snr_gamma, float huber_c, float sigma_data, int reduction, bool write_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "diffusion_bwd(Tensor grad_output, Tensor model_output, Tensor sample, Tensor noise, "
      "Tensor t, Tensor? table, Tensor? weight, int schedule, int prediction, int weighting, "
      "int loss_type, float snr_gamma, float huber_c, float sigma_data, int reduction, "
      "bool model_output_grad, bool sample_grad, bool noise_grad) -> (Tensor, Tensor, Tensor)");
  // out = p*sample + q*noise per sample (add_noise, velocity, flow, edm); its backward gives
  // (p*grad, q*grad), each [0] when not asked for.
  m.def("diffusion_mix(Tensor sample, Tensor noise, Tensor t, Tensor? table, int kind) -> Tensor");
  m.def(
      "diffusion_mix_bwd(Tensor grad, Tensor t, Tensor? table, int kind, bool sample_grad, "
      "bool noise_grad) -> (Tensor, Tensor)");
}
