// The plan of the seg_combine ops (fastgenloss/seg_combine.h) from their arguments, checked:
// shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>

#include "fastgenloss/seg_combine.h"

namespace fastgenloss {

SegCombine seg_combine_plan(const at::Tensor& stats, const at::Tensor& xent,
                            at::ArrayRef<double> overlap, double bce, double count, double focal,
                            bool binary, bool per_image, bool sum, bool log_loss, double smooth,
                            double eps);

}  // namespace fastgenloss
