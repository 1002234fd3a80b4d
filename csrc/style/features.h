// Features [N, C, H, W] (any trailing dims) or [N, C, L] as [N, C, L]: the shared argument check
// of the style family's ops (gram, style, contextual).
#pragma once

#include <ATen/ATen.h>

namespace fastgenloss {

// f as [N, C, L] (a view for contiguous and channels_last layouts); `shapes` names the shapes
// the op takes, for the error.
inline at::Tensor features_ncl(const at::Tensor& f, const char* op, const char* name, const char* shapes) {
  TORCH_CHECK(f.dim() >= 3, op, ": ", name, " must be ", shapes, ", got ", f.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), op, ": ", name,
              " must be a floating tensor, got ", f.scalar_type());
  return f.dim() == 3 ? f : f.flatten(2);
}

}  // namespace fastgenloss
