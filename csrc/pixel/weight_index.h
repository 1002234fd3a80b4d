// Reading a broadcast weight in place. The kernels walk the input linearly through its dense
// storage; a weight that is a zero-stride view of the input's shape (a [N, 1, H, W] mask over
// [N, C, H, W], a per-channel [1, C, 1, 1] scale) is then read through WeightIndex::offset
// instead of being copied to the input's full size. Torch-free: shared by the CPU kernels and
// the CUDA kernels.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace fastgenloss {

constexpr int kMaxIndexDims = 6;

// The input's dims in memory order (outermost first, size-1 dims dropped, adjacent dims merged
// where the weight allows), with the weight's element stride along each.
struct WeightIndex {
  int ndim = 0;
  int64_t size[kMaxIndexDims] = {};
  int64_t stride[kMaxIndexDims] = {};
};

// The weight's element offset for the input's linear (storage-order) position i.
FGL_HOST_DEVICE int64_t weight_offset(const WeightIndex& w, int64_t i) {
  int64_t off = 0;
  for (int d = w.ndim - 1; d >= 0; --d) {
    const int64_t q = i / w.size[d];
    off += (i - q * w.size[d]) * w.stride[d];
    i = q;
  }
  return off;
}
// Along the innermost dim the weight steps by weight_inner_stride (0: broadcast, 1: contiguous).
FGL_HOST_DEVICE int64_t weight_inner_size(const WeightIndex& w) { return w.size[w.ndim - 1]; }
FGL_HOST_DEVICE int64_t weight_inner_stride(const WeightIndex& w) { return w.stride[w.ndim - 1]; }

}  // namespace fastgenloss
