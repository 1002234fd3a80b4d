// The segmentation losses' second stage (combine.h): argument checks and the
// plan, shared by the CPU and CUDA implementations, and the CPU implementation (a loop over
// classes: the statistics are [N, C, S], a few thousand numbers).
#include "segmentation/combine_ops.h"
#include "segmentation/errors.h"

#include <torch/library.h>

namespace fastgenloss {

namespace {
constexpr const char* kOp = "fastgenloss::seg_combine";
}

SegCombine seg_combine_plan(const at::Tensor& stats, const at::Tensor& xent,
                            at::ArrayRef<double> overlap, double bce, double count, double focal,
                            bool binary, bool per_image, bool sum, bool log_loss, double smooth,
                            double eps, const std::optional<at::Tensor>& class_weights,
                            at::Tensor* weights) {
  TORCH_CHECK(stats.dim() == 3 && (stats.size(2) == 3 || stats.size(2) == 5) &&
                  (stats.scalar_type() == at::kFloat || stats.scalar_type() == at::kDouble),
              kOp, ": stats must be float32 or float64 [N, C, 3 or 5], got ", stats.scalar_type(),
              " ", stats.sizes());
  TORCH_CHECK(xent.dim() == 2 && xent.size(0) == stats.size(0) && xent.size(1) == stats.size(1) &&
                  xent.scalar_type() == stats.scalar_type() && xent.device() == stats.device(),
              kOp, ": xent must be [N, C] = [", stats.size(0), ", ", stats.size(1), "] of stats' dtype ",
              stats.scalar_type(), " on ", stats.device(), ", got ", xent.scalar_type(), " ",
              xent.sizes(), " on ", xent.device());
  TORCH_CHECK(overlap.size() % 4 == 0 && overlap.size() / 4 <= size_t(kSegMaxOverlap), kOp,
              ": overlap must hold (weight, alpha, beta, gamma) for at most ", kSegMaxOverlap,
              " terms, got ", overlap.size(), " numbers");
  *weights = at::Tensor();
  if (class_weights.has_value() && class_weights->defined()) {
    const at::Tensor& w = *class_weights;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == stats.size(1) &&
                    w.scalar_type() == stats.scalar_type() && w.device() == stats.device(),
                kOp, ": class_weights must be [C] = [", stats.size(1), "] of stats' dtype ",
                stats.scalar_type(), " on ", stats.device(), ", got ", w.scalar_type(), " ",
                w.sizes(), " on ", w.device());
    *weights = w.contiguous();
  }
  SegCombine q{};
  q.n = stats.size(0);
  q.c = stats.size(1);
  q.s = stats.size(2);
  q.nterms = int(overlap.size() / 4);
  for (int k = 0; k < q.nterms; ++k) {
    q.w[k] = overlap[4 * k];
    q.alpha[k] = overlap[4 * k + 1];
    q.beta[k] = overlap[4 * k + 2];
    q.gamma[k] = overlap[4 * k + 3];
  }
  q.bce = bce;
  q.count = count;
  q.focal = focal;
  q.binary = binary;
  q.per_image = per_image;
  q.sum = sum;
  q.log_loss = log_loss;
  q.smooth = smooth;
  q.eps = eps;
  return q;
}

namespace {

template <typename T>
void totals_cpu(const SegCombine& q, const T* stats, const T* xent, const T* weights, double* tot) {
  for (int i = 0; i < kSegTotals; ++i) tot[i] = 0.0;
  for (int64_t c = 0; c < q.c; ++c) seg_combine_class(q, stats, xent, weights, c, tot);
}

at::Tensor seg_combine_cpu(const at::Tensor& stats_, const at::Tensor& xent_,
                           at::ArrayRef<double> overlap, double bce, double count, double focal,
                           bool binary, bool per_image, bool sum, bool log_loss, double smooth,
                           double eps, const std::optional<at::Tensor>& class_weights) {
  at::Tensor w;
  const SegCombine q = seg_combine_plan(stats_, xent_, overlap, bce, count, focal, binary,
                                        per_image, sum, log_loss, smooth, eps, class_weights, &w);
  const at::Tensor stats = stats_.contiguous(), xent = xent_.contiguous();
  at::Tensor out = at::empty({}, stats.options());
  AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "seg_combine", [&] {
    double tot[kSegTotals];
    totals_cpu(q, stats.const_data_ptr<scalar_t>(), xent.const_data_ptr<scalar_t>(),
               static_cast<const scalar_t*>(seg_weights_ptr(w)), tot);
    *out.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(seg_combine_total(q, tot));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> seg_combine_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& stats_, const at::Tensor& xent_,
    at::ArrayRef<double> overlap, double bce, double count, double focal, bool binary,
    bool per_image, bool sum, bool log_loss, double smooth, double eps,
    const std::optional<at::Tensor>& class_weights) {
  at::Tensor w;
  const SegCombine q = seg_combine_plan(stats_, xent_, overlap, bce, count, focal, binary,
                                        per_image, sum, log_loss, smooth, eps, class_weights, &w);
  TORCH_CHECK(grad.numel() == 1, kOp, ": grad must be a scalar, got ", grad.sizes());
  const at::Tensor stats = stats_.contiguous(), xent = xent_.contiguous();
  at::Tensor gstats = at::empty_like(stats), gxent = at::empty_like(xent);
  AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "seg_combine_bwd", [&] {
    const scalar_t* s = stats.const_data_ptr<scalar_t>();
    const auto* wp = static_cast<const scalar_t*>(seg_weights_ptr(w));
    double tot[kSegTotals];
    totals_cpu(q, s, xent.const_data_ptr<scalar_t>(), wp, tot);
    const double g = grad.item<double>();
    for (int64_t c = 0; c < q.c; ++c) {
      seg_combine_class_grad(q, s, wp, tot, g, c, gstats.mutable_data_ptr<scalar_t>(),
                             gxent.mutable_data_ptr<scalar_t>());
    }
  });
  return {gstats, gxent};
}

}  // namespace

// seg_labels on any device (ATen ops): one pass for the check, whose result the host reads
at::Tensor seg_labels_impl(const at::Tensor& target, int64_t num_classes, bool has_ignore,
                           int64_t ignore_index, bool check) {
  constexpr const char* op = "fastgenloss::seg_labels";
  TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && !at::isComplexType(target.scalar_type()) &&
                  target.scalar_type() != at::kBool,
              op, ": labels must be an integer tensor, got ", target.scalar_type());
  TORCH_CHECK(num_classes > 0, op, ": num_classes must be positive, got ", num_classes);
  at::Tensor t = target.to(at::kLong, /*non_blocking=*/false, /*copy=*/true);  // never an alias
  const at::Tensor keep = has_ignore ? t.ne(ignore_index) : at::ones_like(t, t.options().dtype(at::kBool));
  const at::Tensor bad = check ? keep.logical_and(t.lt(0).logical_or(t.ge(num_classes)))
                              : at::Tensor();
  if (check && bad.any().item<bool>()) {
    seg_raise_bad_label(op, num_classes, has_ignore, ignore_index,
                        t.masked_select(bad).index({0}).item<int64_t>());
  }
  if (has_ignore) t.masked_fill_(keep.logical_not(), 0);
  return t;
}

at::Tensor seg_labels(const at::Tensor& target, int64_t num_classes, bool has_ignore,
                      int64_t ignore_index) {
  return seg_labels_impl(target, num_classes, has_ignore, ignore_index, /*check=*/true);
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CompositeExplicitAutograd, m) {
  m.impl("seg_labels", &fastgenloss::seg_labels);
}

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("seg_combine", &fastgenloss::seg_combine_cpu);
  m.impl("seg_combine_bwd", &fastgenloss::seg_combine_bwd_cpu);
}
