// The segmentation ops' schemas. The statistics pass (seg_stats: cpu.cpp, cuda.cpp over the
// kernels of cpu_kernels.h / kernels.cu, the math of math.h) and the second stage from
// statistics to the loss (seg_combine: combine.cpp, the math of combine.h); seg_labels checks
// integer labels for the PyTorch-ops statistics (combine.cpp).
#include <torch/library.h>
#include "core/autograd.h"

TORCH_LIBRARY_FRAGMENT(fastgenloss, m) {
  // segmentation statistics (segmentation/math.h): logits [N, C, M], labels [N, M] or mask
  // [N, C, M] -> (stats [N, C, 3] = (sum p, sum t, sum |p - t|), xent [N, C]); with
  // focal_gamma >= 0 stats are [N, C, 5]: + the focal term's sum and the kept count
  // (focal_alpha < 0: no alpha weighting). label_smoothing in [0, 1]: the cross-entropy
  // against smoothed targets (multiclass: (1 - ls) onehot + ls / C, torch's and smp's
  // SoftCrossEntropyLoss'; binary / multilabel: t (1 - ls) + (1 - t) ls, smp's
  // SoftBCEWithLogitsLoss'); the other statistics keep the targets as they are. The CUDA
  // kernel takes label_smoothing = 0 only (Python computes smoothed statistics on CUDA with
  // PyTorch ops)
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
  // the segmentation losses' second stage (segmentation/combine.h): statistics -> the scalar
  // loss (the statistics' dtype); overlap = (weight, alpha, beta, gamma) per overlap term;
  // class_weights [C] weight the overlap and focal terms' class averages; the backward gives
  // (grad_stats, grad_xent)
  m.def(
      "seg_combine(Tensor stats, Tensor xent, float[] overlap, float bce, float count, "
      "float focal, bool binary, bool per_image, bool sum, bool log_loss, float smooth, "
      "float eps, Tensor? class_weights=None) -> Tensor");
  // the Lovász losses (lovasz.cpp, the math of lovasz.h): kind 0 the hinge over logits
  // [N, C, M] and a target of their shape (binary / multilabel), 1 the softmax per class with
  // int64 labels [N, M] (multiclass); -> (loss, d loss / d input for grad_output = 1 when
  // write_grad, else [0]); lovasz_bwd scales that gradient (input: the logits, for autograd's
  // graph only)
  m.def(
      "lovasz_fwd(Tensor input, Tensor target, int kind, bool per_image, bool has_ignore, "
      "int ignore_index, bool write_grad) -> (Tensor, Tensor)");
  m.def("lovasz_bwd(Tensor grad_output, Tensor grad, Tensor input) -> Tensor");
  // smp's MCC loss on probabilities (mcc.cpp): [sum p, sum t, sum p t] in one pass, and their
  // backward (each [0] when not asked for)
  m.def("mcc_stats(Tensor input, Tensor target) -> Tensor");
  m.def(
      "mcc_stats_bwd(Tensor grad, Tensor input, Tensor target, bool input_grad, "
      "bool target_grad) -> (Tensor, Tensor)");
  m.def(
      "seg_combine_bwd(Tensor grad, Tensor stats, Tensor xent, float[] overlap, float bce, "
      "float count, float focal, bool binary, bool per_image, bool sum, bool log_loss, "
      "float smooth, float eps, Tensor? class_weights=None) -> (Tensor, Tensor)");
}

// The backward ops are differentiated no further: a second derivative raises (core/autograd.h).
TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  const char* msg =
      "fastgenloss: second derivatives of the segmentation losses are not implemented "
      "(differentiate once, without create_graph=True)";
  m.impl("seg_stats_bwd", fastgenloss::first_order_only(msg));
  m.impl("seg_combine_bwd", fastgenloss::first_order_only(msg));
}
