// ATen-side helpers shared by the families' op files (g++ only: .cu files never include ATen).
#pragma once

#include <ATen/ATen.h>

#include "core/dtype.h"
#include "core/host_memory.h"

namespace fastgenloss {

// The kernels' DType of a floating tensor (errors on any other dtype).
inline DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "fastgenloss: unsupported dtype ", t, " (float32, float64, float16, bfloat16)");
  }
}

// The dtype the kernels accumulate t in (acc_type_t's, as a ScalarType): double for double,
// float otherwise.
inline at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// `t`'s values with exactly `like`'s sizes and strides (`like` dense): `t` itself when it
// already matches, otherwise a copy.
inline at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.sizes() == like.sizes() && t.strides() == like.strides() &&
      t.is_non_overlapping_and_dense()) {
    return t;
  }
  return empty_like_output(like, t.options()).copy_(t);
}

}  // namespace fastgenloss
