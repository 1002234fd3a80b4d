// Reading a broadcast weight in place. The kernels walk the input linearly through its dense
// storage; a weight that is a zero-stride view of the input's shape (a [N, 1, H, W] mask over
// [N, C, H, W], a per-channel [1, C, 1, 1] scale) is then read through WeightIndex::offset
// instead of being copied to the input's full size. Torch-free: shared by the CPU kernels and
// the CUDA kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FGL_HD_MEMBER __host__ __device__ __forceinline__
#else
#define FGL_HD_MEMBER inline
#endif

namespace fastgenloss {

constexpr int kMaxIndexDims = 6;

// The input's dims in memory order (outermost first, size-1 dims dropped, adjacent dims merged
// where the weight allows), with the weight's element stride along each.
struct WeightIndex {
  int ndim = 0;
  int64_t size[kMaxIndexDims] = {};
  int64_t stride[kMaxIndexDims] = {};

  // The weight's element offset for the input's linear (storage-order) position i.
  FGL_HD_MEMBER int64_t offset(int64_t i) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t q = i / size[d];
      off += (i - q * size[d]) * stride[d];
      i = q;
    }
    return off;
  }
  // Along the innermost dim the weight steps by inner_stride() (0: broadcast, 1: contiguous).
  FGL_HD_MEMBER int64_t inner_size() const { return size[ndim - 1]; }
  FGL_HD_MEMBER int64_t inner_stride() const { return stride[ndim - 1]; }
};

}  // namespace fastgenloss
