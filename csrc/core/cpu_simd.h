// Helpers shared by the CPU kernel files.
#pragma once

#include "core/dtype.h"

namespace fastgenloss {

// The hot loops are compiled twice, for AVX2 and for the x86-64 baseline, and the CPU picks one
// at load time (an ifunc). Functions they inline are compiled inside each clone; out-of-line
// code keeps the baseline ISA, so nothing AVX2 can leak into the baseline path.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FGL_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FGL_CPU_MULTIVERSION
#endif

// Force-inlined (as FGL_HOST_DEVICE is): the CPU kernels' elementwise loops only vectorize
// when every call in them is inlined, and gcc declines some helpers at its default limits.
#define FGL_CPU_INLINE inline __attribute__((always_inline))

}  // namespace fastgenloss
