// The one host/device qualifier of the package: every formula that the CPU kernels and the CUDA
// kernels share (each family's math.h) is written once with it.
#pragma once

#if defined(__CUDACC__)
#define FGL_HOST_DEVICE __host__ __device__ __forceinline__
#else
// static: internal linkage, so copies compiled with different ISA flags (the CPU kernels'
// target_clones, core/cpu_simd.h) are never merged at link time
#define FGL_HOST_DEVICE static inline __attribute__((always_inline))
#endif
