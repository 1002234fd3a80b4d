// CUDA implementations of the segmentation-statistics ops: checks, layouts and scratch here
// (g++), kernels in kernels.cu. Launches on torch's current stream. Multiclass forward reads
// back one flag (a host synchronization) to raise on a label outside [0, C) that is not
// ignore_index, with the value -- the same error as the CPU kernel, never an illegal access
// (the kernel leaves such a position out). While the stream is being captured into a CUDA graph
// the host cannot read: the flag then turns the statistics into NaN on the device instead, so a
// bad label gives a NaN loss, never a silently wrong one.
#include <ATen/ATen.h>

#include <limits>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "segmentation/combine_ops.h"
#include "segmentation/errors.h"
#include "segmentation/launch.h"
#include "segmentation/math.h"
#include "core/tensor_utils.h"

namespace fastgenloss {
namespace {

constexpr const char* kOp = "fastgenloss::seg_stats";

// Whether the current stream is being captured into a CUDA graph (no host reads allowed).
bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// seg_labels on CUDA: checked (a host read) except while capturing.
at::Tensor seg_labels_cuda(const at::Tensor& target, int64_t num_classes, bool has_ignore,
                           int64_t ignore_index) {
  return seg_labels_impl(target, num_classes, has_ignore, ignore_index, !capturing());
}

struct SegOperands {
  at::Tensor input, target;
  SegLaunch launch;
};

SegOperands seg_operands(const at::Tensor& input_, const at::Tensor& target_, int64_t mode,
                         bool has_ignore, int64_t ignore_index, double focal_gamma,
                         double focal_alpha) {
  TORCH_CHECK(mode == kSegBinary || mode == kSegMulticlass || mode == kSegMultilabel, kOp,
              ": unknown mode code ", mode);
  TORCH_CHECK(input_.dim() == 3 && at::isFloatingType(input_.scalar_type()), kOp,
              ": input must be floating logits [N, C, M], got ", input_.sizes(), " ",
              input_.scalar_type());
  TORCH_CHECK(target_.device() == input_.device(), kOp, ": target is on ", target_.device(),
              " but input is on ", input_.device());
  SegOperands o;
  o.input = input_.contiguous();
  SegLabel labels = SegLabel::None;
  if (mode == kSegMulticlass) {
    TORCH_CHECK(target_.dim() == 2 && target_.size(0) == input_.size(0) &&
                    target_.size(1) == input_.size(2),
                kOp, ": labels must be [N, M] = [", input_.size(0), ", ", input_.size(2),
                "], got ", target_.sizes());
    switch (target_.scalar_type()) {
      case at::kByte: labels = SegLabel::UInt8; o.target = target_.contiguous(); break;
      case at::kInt: labels = SegLabel::Int32; o.target = target_.contiguous(); break;
      case at::kLong: labels = SegLabel::Int64; o.target = target_.contiguous(); break;
      case at::kChar:
      case at::kShort:
        labels = SegLabel::Int32;
        o.target = target_.to(at::kInt).contiguous();
        break;
      default: TORCH_CHECK(false, kOp, ": labels must be an integer tensor, got ", target_.scalar_type());
    }
  } else {
    TORCH_CHECK(target_.sizes() == input_.sizes(), kOp, ": target must match input ",
                input_.sizes(), ", got ", target_.sizes());
    o.target = target_.to(input_.scalar_type()).contiguous();
  }
  o.launch = SegLaunch{dtype_of(o.input.scalar_type()), labels, o.input.size(0), o.input.size(1),
                       o.input.size(2), o.input.const_data_ptr(), o.target.const_data_ptr(), mode,
                       has_ignore, ignore_index, focal_gamma, focal_alpha};
  return o;
}

// The CUDA kernel has no label smoothing yet (the CPU kernel has): fastgenloss's Python API
// computes smoothed statistics on CUDA with PyTorch ops, so only a direct call gets here.
void check_no_smoothing(double label_smoothing) {
  TORCH_CHECK(label_smoothing == 0.0, kOp,
              ": label_smoothing is not implemented in the CUDA kernel (got ", label_smoothing,
              "); fastgenloss.segmentation_loss computes it with PyTorch ops on CUDA");
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> seg_stats_cuda(const at::Tensor& input, const at::Tensor& target,
                                                  int64_t mode, bool has_ignore,
                                                  int64_t ignore_index, double focal_gamma,
                                                  double focal_alpha, double label_smoothing) {
  const c10::cuda::CUDAGuard guard(input.device());
  check_no_smoothing(label_smoothing);
  const SegOperands o = seg_operands(input, target, mode, has_ignore, ignore_index, focal_gamma,
                                     focal_alpha);
  const int64_t n = o.launch.n, c = o.launch.c, m = o.launch.m;
  const bool focal = focal_gamma >= 0.0;
  const int64_t W = focal ? 6 : 4, S = focal ? 5 : 3;
  const auto acc_opts = o.input.options().dtype(acc_scalar_type(o.input.scalar_type()));
  const bool mc = mode == kSegMulticlass;
  const int64_t rows = mc ? n : n * c;
  at::Tensor part = at::empty({std::max<int64_t>(1, rows * seg_chunks(m) * (mc ? c : 1) * W)}, acc_opts);
  at::Tensor stats = at::empty({n, c, S}, acc_opts), xent = at::empty({n, c}, acc_opts);
  at::Tensor bad = at::zeros({2}, o.input.options().dtype(at::kLong));
  C10_CUDA_CHECK(launch_seg_fwd(o.launch, part.mutable_data_ptr(), stats.mutable_data_ptr(),
                                xent.mutable_data_ptr(), bad.mutable_data_ptr(), stream_of(o.input)));
  if (mc && n * m > 0) {
    if (capturing()) {
      const at::Tensor any_bad = bad.select(0, 0).ne(0);
      stats.masked_fill_(any_bad, std::numeric_limits<double>::quiet_NaN());
      xent.masked_fill_(any_bad, std::numeric_limits<double>::quiet_NaN());
    } else {
      const at::Tensor hb = bad.cpu();
      const int64_t* h = hb.const_data_ptr<int64_t>();
      if (h[0] != 0) seg_raise_bad_label(kOp, c, has_ignore, ignore_index, h[1]);
    }
  }
  return {stats, xent};
}

at::Tensor seg_stats_bwd_cuda(const at::Tensor& grad_stats, const at::Tensor& grad_xent,
                              const at::Tensor& input, const at::Tensor& target, int64_t mode,
                              bool has_ignore, int64_t ignore_index, double focal_gamma,
                              double focal_alpha, double label_smoothing) {
  const c10::cuda::CUDAGuard guard(input.device());
  check_no_smoothing(label_smoothing);
  const SegOperands o = seg_operands(input, target, mode, has_ignore, ignore_index, focal_gamma,
                                     focal_alpha);
  const int64_t n = o.launch.n, c = o.launch.c;
  const int64_t S = focal_gamma >= 0.0 ? 5 : 3;
  TORCH_CHECK(grad_stats.sizes() == at::IntArrayRef({n, c, S}) &&
                  grad_xent.sizes() == at::IntArrayRef({n, c}),
              kOp, ": gradients must be [N, C, ", S, "] and [N, C], got ", grad_stats.sizes(),
              " and ", grad_xent.sizes());
  const auto acc = acc_scalar_type(o.input.scalar_type());
  const at::Tensor gs = grad_stats.to(o.input.device(), acc).contiguous();
  const at::Tensor gx = grad_xent.to(o.input.device(), acc).contiguous();
  at::Tensor out = at::empty_like(o.input);
  C10_CUDA_CHECK(launch_seg_bwd(o.launch, gs.const_data_ptr(), gx.const_data_ptr(),
                                out.mutable_data_ptr(), stream_of(o.input)));
  return out;
}

at::Tensor seg_combine_cuda(const at::Tensor& stats_, const at::Tensor& xent_,
                            at::ArrayRef<double> overlap, double bce, double count, double focal,
                            bool binary, bool per_image, bool sum, bool log_loss, double smooth,
                            double eps, const std::optional<at::Tensor>& class_weights) {
  const c10::cuda::CUDAGuard guard(stats_.device());
  at::Tensor w;
  const SegCombine q = seg_combine_plan(stats_, xent_, overlap, bce, count, focal, binary,
                                        per_image, sum, log_loss, smooth, eps, class_weights, &w);
  const at::Tensor stats = stats_.contiguous(), xent = xent_.contiguous();
  at::Tensor out = at::empty({}, stats.options());
  C10_CUDA_CHECK(launch_seg_combine(q, dtype_of(stats.scalar_type()), stats.const_data_ptr(),
                                    xent.const_data_ptr(), seg_weights_ptr(w), nullptr, out.mutable_data_ptr(),
                                    nullptr, nullptr, stream_of(stats)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> seg_combine_bwd_cuda(
    const at::Tensor& grad_, const at::Tensor& stats_, const at::Tensor& xent_,
    at::ArrayRef<double> overlap, double bce, double count, double focal, bool binary,
    bool per_image, bool sum, bool log_loss, double smooth, double eps,
    const std::optional<at::Tensor>& class_weights) {
  const c10::cuda::CUDAGuard guard(stats_.device());
  at::Tensor w;
  const SegCombine q = seg_combine_plan(stats_, xent_, overlap, bce, count, focal, binary,
                                        per_image, sum, log_loss, smooth, eps, class_weights, &w);
  TORCH_CHECK(grad_.numel() == 1, "fastgenloss::seg_combine_bwd: grad must be a scalar, got ",
              grad_.sizes());
  const at::Tensor stats = stats_.contiguous(), xent = xent_.contiguous();
  const at::Tensor grad = grad_.to(stats.device(), stats.scalar_type()).contiguous();
  at::Tensor gstats = at::empty_like(stats), gxent = at::empty_like(xent);
  C10_CUDA_CHECK(launch_seg_combine(q, dtype_of(stats.scalar_type()), stats.const_data_ptr(),
                                    xent.const_data_ptr(), seg_weights_ptr(w), grad.const_data_ptr(), nullptr,
                                    gstats.mutable_data_ptr(), gxent.mutable_data_ptr(),
                                    stream_of(stats)));
  return {gstats, gxent};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CUDA, m) {
  m.impl("seg_combine", &fastgenloss::seg_combine_cuda);
  m.impl("seg_combine_bwd", &fastgenloss::seg_combine_bwd_cuda);
  m.impl("seg_stats", &fastgenloss::seg_stats_cuda);
  m.impl("seg_stats_bwd", &fastgenloss::seg_stats_bwd_cuda);
  m.impl("seg_labels", &fastgenloss::seg_labels_cuda);
}
