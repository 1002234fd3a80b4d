// Helpers shared by the CUDA glue files (g++ side: ATen allowed here, not in .cu files).
#pragma once

#include <ATen/ATen.h>

#include "fastgenloss/pixel_launch.h"

namespace fastgenloss {

inline PixelDType pixel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return PixelDType::Float;
    case at::kDouble: return PixelDType::Double;
    case at::kHalf: return PixelDType::Half;
    case at::kBFloat16: return PixelDType::BFloat16;
    default: TORCH_CHECK(false, "fastgenloss: unsupported dtype ", t, " (float32, float64, float16, bfloat16)");
  }
}

}  // namespace fastgenloss
