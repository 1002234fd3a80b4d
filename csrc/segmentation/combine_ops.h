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

// the weights' data (nullptr: none, every class weighs 1)
inline const void* seg_weights_ptr(const at::Tensor& weights) {
  return weights.defined() ? weights.const_data_ptr() : nullptr;
}

}  // namespace fastgenloss
