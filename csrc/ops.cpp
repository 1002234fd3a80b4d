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

#include "fastgenloss/diffusion_ops.h"
#include "fastgenloss/pixel_ops.h"
#include "fastgenloss/host_memory.h"

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

// `t`'s values with exactly `like`'s sizes and strides (`like` dense): `t` itself when it
// already matches, otherwise a copy.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.sizes() == like.sizes() && t.strides() == like.strides() &&
      t.is_non_overlapping_and_dense()) {
    return t;
  }
  return empty_like_output(like, t.options()).copy_(t);
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

TORCH_LIBRARY(fastgenloss, m) {
  m.def(
      "pixel_fwd(Tensor input, Tensor target, Tensor? weight, float l1, float mse, "
      "float charbonnier, float huber, float smooth_l1, float eps, float delta, float beta, "
      "int reduction, bool write_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pixel_bwd(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor loss, "
      "Tensor weight_sum, float l1, float mse, float charbonnier, float huber, float smooth_l1, "
      "float eps, float delta, float beta, int reduction, bool input_grad, bool weight_grad) "
      "-> (Tensor, Tensor)");
  // Diffusion losses (csrc/include/fastgenloss/diffusion_math.h gives the codes):
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
  // Style (csrc/style_ops.cpp): gram = scale * F F^T ([N, C, L] or [N, C, H, W, ...] ->
  // [N, C, C]); style_fwd -> (loss, diff) with diff = G_x - G_y in the accumulation dtype (kept
  // for backward); style_bwd -> (grad_input, grad_target), each [0] when not asked for.
  m.def("gram(Tensor features, float scale) -> Tensor");
  m.def("gram_bwd(Tensor grad, Tensor features, float scale) -> Tensor");
  m.def(
      "style_fwd(Tensor input, Tensor target, bool target_is_gram, float scale, int reduction) "
      "-> (Tensor, Tensor)");
  m.def(
      "style_bwd(Tensor grad_output, Tensor diff, Tensor input, Tensor target, "
      "bool target_is_gram, float scale, int reduction, bool input_grad, bool target_grad) "
      "-> (Tensor, Tensor)");
  // Contextual loss (csrc/contextual_ops.cpp): x [N, C, P...], y [N, C, Q...] -> (loss in the
  // accumulation dtype, cmax = max over x positions of cx [N, Q], its argmax [N, Q] int64), S
  // walked in blocks of chunk_rows x positions (0: automatic, ~1M similarities a block); the
  // backward recomputes each block (no [N, P, Q] tensor ever exists) -> (grad_x, grad_y), [0]
  // when not asked for.
  m.def("contextual_fwd(Tensor x, Tensor y, float band_width, int chunk_rows) -> (Tensor, Tensor, Tensor)");
  m.def(
      "contextual_bwd(Tensor grad_output, Tensor x, Tensor y, Tensor cmax, Tensor istar, "
      "float band_width, int chunk_rows, bool x_grad, bool y_grad) -> (Tensor, Tensor)");
  // segmentation statistics (fastgenloss/seg_math.h): logits [N, C, M], labels [N, M] or mask
  // [N, C, M] -> (stats [N, C, 3] = (sum p, sum t, sum |p - t|), xent [N, C]); with
  // focal_gamma >= 0 stats are [N, C, 5]: + the focal term's sum and the kept count
  // (focal_alpha < 0: no alpha weighting). label_smoothing in [0, 1]: the cross-entropy
  // against smoothed targets (multiclass: (1 - ls) onehot + ls / C, torch's and smp's
  // SoftCrossEntropyLoss'; binary / multilabel: t (1 - ls) + (1 - t) ls, smp's
  // SoftBCEWithLogitsLoss'); the other statistics keep the targets as they are. The CUDA
  // kernel takes label_smoothing = 0 only (Python computes smoothed statistics on CUDA with
  // PyTorch ops until a GPU session has run the kernel with it)
  m.def(
      "seg_stats(Tensor input, Tensor target, int mode, bool has_ignore, int ignore_index, "
      "float focal_gamma=-1.0, float focal_alpha=-1.0, float label_smoothing=0.0) -> (Tensor, Tensor)");
  m.def(
      "seg_stats_bwd(Tensor grad_stats, Tensor grad_xent, Tensor input, Tensor target, int mode, "
      "bool has_ignore, int ignore_index, float focal_gamma=-1.0, float focal_alpha=-1.0, "
      "float label_smoothing=0.0) -> Tensor");
  // integer labels [N, M] (any integer dtype) checked against [0, num_classes) or ignore_index
  // (an error naming the first bad label) -> int64 labels with the ignored ones set to 0: the
  // PyTorch-ops statistics' labels under torch.compile, where Python cannot branch on the data
  m.def("seg_labels(Tensor target, int num_classes, bool has_ignore, int ignore_index) -> Tensor");
  // the segmentation losses' second stage (fastgenloss/seg_combine.h): statistics -> the scalar
  // loss (the statistics' dtype); overlap = (weight, alpha, beta, gamma) per overlap term;
  // class_weights [C] weight the overlap and focal terms' class averages; the backward gives
  // (grad_stats, grad_xent)
  m.def(
      "seg_combine(Tensor stats, Tensor xent, float[] overlap, float bce, float count, "
      "float focal, bool binary, bool per_image, bool sum, bool log_loss, float smooth, "
      "float eps, Tensor? class_weights=None) -> Tensor");
  m.def(
      "seg_combine_bwd(Tensor grad, Tensor stats, Tensor xent, float[] overlap, float bce, "
      "float count, float focal, bool binary, bool per_image, bool sum, bool log_loss, "
      "float smooth, float eps, Tensor? class_weights=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("pixel_fwd", &fastgenloss::pixel_fwd_cpu);
  m.impl("pixel_bwd", &fastgenloss::pixel_bwd_cpu);
  m.impl("diffusion_fwd", &fastgenloss::diffusion_fwd_cpu);
  m.impl("diffusion_bwd", &fastgenloss::diffusion_bwd_cpu);
  m.impl("diffusion_mix", &fastgenloss::diffusion_mix_cpu);
  m.impl("diffusion_mix_bwd", &fastgenloss::diffusion_mix_bwd_cpu);
}
