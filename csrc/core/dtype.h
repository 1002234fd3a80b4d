// The floating dtypes the kernels take and the type they accumulate in. Torch-free, so that the
// CUDA launchers (each family's launch.h) and .cu files can use it; core/tensor_utils.h maps an
// at::ScalarType onto it.
#pragma once

#include <type_traits>

namespace fastgenloss {

enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// Accumulation type: double for double; float for float, half and bfloat16 (at::Half /
// __half, at::BFloat16 / __nv_bfloat16 alike).
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace fastgenloss
