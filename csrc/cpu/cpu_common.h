// Helpers shared by the CPU kernel files.
#pragma once

#include <type_traits>

namespace fastgenloss {

// The hot loops are compiled twice, for AVX2 and for the x86-64 baseline, and the CPU picks one
// at load time (an ifunc). Functions they inline are compiled inside each clone; out-of-line
// code keeps the baseline ISA, so nothing AVX2 can leak into the baseline path.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FGL_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FGL_CPU_MULTIVERSION
#endif

// Accumulation type: float for float, half and bfloat16; double for double.
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace fastgenloss
