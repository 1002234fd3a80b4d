// The seg_stats / seg_stats_bwd ops on the CPU: argument checks, the dispatch on the logits'
// dtype to the kernels (cpu_kernels.h, compiled per dtype and direction in generated
// translation units), and the deterministic sum of the chunk partials.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "core/tensor_utils.h"
#include "segmentation/cpu.h"
#include "segmentation/errors.h"
#include "segmentation/math.h"

namespace fastgenloss {
namespace {

using seg_cpu::BadLabel;
using seg_cpu::Focal;
using seg_cpu::kChunk;
using seg_cpu::kOp;

void check_args(const at::Tensor& input, const at::Tensor& target, int64_t mode,
                double label_smoothing) {
  TORCH_CHECK(mode == kSegBinary || mode == kSegMulticlass || mode == kSegMultilabel, kOp,
              ": unknown mode code ", mode);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, kOp,
              ": label_smoothing must be in [0, 1], got ", label_smoothing);
  TORCH_CHECK(input.dim() == 3 && at::isFloatingType(input.scalar_type()), kOp,
              ": input must be floating logits [N, C, M], got ", input.sizes(), " ",
              input.scalar_type());
  if (mode == kSegMulticlass) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == input.size(0) &&
                    target.size(1) == input.size(2),
                kOp, ": labels must be [N, M] = [", input.size(0), ", ", input.size(2),
                "], got ", target.sizes());
    TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
                kOp, ": labels must be an integer tensor, got ", target.scalar_type());
  } else {
    TORCH_CHECK(target.sizes() == input.sizes(), kOp, ": target must match input ",
                input.sizes(), ", got ", target.sizes());
  }
}

// [N, C, M] logits whose memory is [N, M, C] (a channels_last tensor viewed as [N, C, M], as
// the Python side passes it): read in place, no contiguous copy. The gradient gets the same
// layout (empty_like keeps a dense permutation's strides).
bool channels_last_view(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  const int64_t c = x.size(1), m = x.size(2);
  return (x.stride(1) == 1 || c == 1) && (x.stride(2) == c || m == 1) &&
         (x.stride(0) == c * m || x.size(0) == 1);
}

void raise_bad_label(const BadLabel& bad, int64_t c, bool has_ignore, int64_t ignore) {
  if (bad.seen.load()) seg_raise_bad_label(kOp, c, has_ignore, ignore, bad.value.load());
}

}  // namespace

// -> (stats [N, C, S] = (P, T, A[, F, K]), xent [N, C]), float32 (float64 for double input)
std::tuple<at::Tensor, at::Tensor> seg_stats_cpu(const at::Tensor& input_, const at::Tensor& target_,
                                                 int64_t mode, bool has_ignore,
                                                 int64_t ignore_index, double focal_gamma,
                                                 double focal_alpha, double label_smoothing) {
  check_args(input_, target_, mode, label_smoothing);
  const Focal focal{focal_gamma >= 0.0, focal_gamma, focal_alpha};
  const int64_t W = focal.part(), S = focal.stats();
  const bool nhwc = mode == kSegMulticlass && channels_last_view(input_);
  const at::Tensor input = nhwc ? input_ : input_.contiguous(), target = target_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), m = input.size(2);
  const auto acc = acc_scalar_type(input.scalar_type());
  const int64_t nch = std::max<int64_t>(1, (m + kChunk - 1) / kChunk);
  const int64_t rows = mode == kSegMulticlass ? n : n * c;
  std::vector<double> part(size_t(rows) * nch * (mode == kSegMulticlass ? c : 1) * W, 0.f);
  BadLabel bad;
  if (m > 0 && n > 0 && c > 0) {
    const seg_cpu::FwdArgs args{input, target, mode, n, c, m, nch, has_ignore, ignore_index,
                                focal, nhwc, part, bad, label_smoothing};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "seg_stats",
                                    [&] { seg_cpu::stats_fwd<scalar_t>(args); });
  }
  raise_bad_label(bad, c, has_ignore, ignore_index);
  // chunk partials, added per (sample, class) in chunk order, in double
  at::Tensor stats = at::zeros({n, c, S}, at::kDouble), xent = at::zeros({n, c}, at::kDouble);
  double* sp = stats.data_ptr<double>();
  double* xp = xent.data_ptr<double>();
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t k = 0; k < c; ++k) {
      double s[6] = {0, 0, 0, 0, 0, 0};
      for (int64_t ch = 0; ch < nch && m > 0; ++ch) {
        const double* a = mode == kSegMulticlass ? part.data() + ((b * nch + ch) * c + k) * W
                                                : part.data() + ((b * c + k) * nch + ch) * W;
        for (int q = 0; q < W; ++q) s[q] += a[q];
      }
      double* out = sp + (b * c + k) * S;
      out[0] = s[0], out[1] = s[1], out[2] = s[2];
      if (focal.on) out[3] = s[4], out[4] = s[5];
      xp[b * c + k] = s[3];
    }
  }
  return {stats.to(acc), xent.to(acc)};
}

at::Tensor seg_stats_bwd_cpu(const at::Tensor& grad_stats, const at::Tensor& grad_xent,
                             const at::Tensor& input_, const at::Tensor& target_, int64_t mode,
                             bool has_ignore, int64_t ignore_index, double focal_gamma,
                             double focal_alpha, double label_smoothing) {
  check_args(input_, target_, mode, label_smoothing);
  const Focal focal{focal_gamma >= 0.0, focal_gamma, focal_alpha};
  const bool nhwc = mode == kSegMulticlass && channels_last_view(input_);
  const at::Tensor input = nhwc ? input_ : input_.contiguous(), target = target_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), m = input.size(2);
  TORCH_CHECK(grad_stats.sizes() == at::IntArrayRef({n, c, focal.stats()}) &&
                  grad_xent.sizes() == at::IntArrayRef({n, c}),
              kOp, ": gradients must be [N, C, ", focal.stats(), "] and [N, C], got ", grad_stats.sizes(), " and ",
              grad_xent.sizes());
  const auto acc = acc_scalar_type(input.scalar_type());
  const at::Tensor gs = grad_stats.to(acc).contiguous();
  const at::Tensor gx = grad_xent.to(acc).contiguous();
  at::Tensor out = empty_like_output(input);
  BadLabel bad;
  if (input.numel() > 0) {
    const seg_cpu::BwdArgs args{input, target, mode, n, c, m, has_ignore, ignore_index, gs, gx,
                                out, focal, nhwc, bad, label_smoothing};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "seg_stats_bwd",
                                    [&] { seg_cpu::stats_bwd<scalar_t>(args); });
  }
  raise_bad_label(bad, c, has_ignore, ignore_index);
  return out;
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("seg_stats", &fastgenloss::seg_stats_cpu);
  m.impl("seg_stats_bwd", &fastgenloss::seg_stats_bwd_cpu);
}
