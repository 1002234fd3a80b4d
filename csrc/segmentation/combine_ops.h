// The plan of the seg_combine ops (combine.h) from their arguments, checked:
// shared by the CPU and CUDA implementations. The class weights, when given, come back
// contiguous in *weights (undefined without them).
#pragma once

#include <ATen/ATen.h>

#include "segmentation/combine.h"

namespace fastgenloss {

SegCombine seg_combine_plan(const at::Tensor& stats, const at::Tensor& xent,
                            at::ArrayRef<double> overlap, double bce, double count, double focal,
                            bool binary, bool per_image, bool sum, bool log_loss, double smooth,
                            double eps, const std::optional<at::Tensor>& class_weights,
                            at::Tensor* weights);

// seg_labels: the labels as int64 with ignored positions set to 0; with `check`, a label outside
// [0, C) that is not ignore_index raises (one pass, whose flag the host reads). Without it (a CUDA
// stream being captured into a graph, where the host cannot read) such labels pass through, and
// the ops that index with them fail on the device as torch's own do.
at::Tensor seg_labels_impl(const at::Tensor& target, int64_t num_classes, bool has_ignore,
                           int64_t ignore_index, bool check);

// the weights' data (nullptr: none, every class weighs 1)
inline const void* seg_weights_ptr(const at::Tensor& weights) {
  return weights.defined() ? weights.const_data_ptr() : nullptr;
}

}  // namespace fastgenloss
