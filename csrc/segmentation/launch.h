// Launchers of the CUDA segmentation-statistics kernels (see math.h): plain C++ with raw
// pointers, so that the .cu file includes no torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "segmentation/combine.h"

namespace fastgenloss {

enum class SegLabel : int { None = 0, UInt8 = 1, Int32 = 2, Int64 = 3 };

struct SegLaunch {
  DType dtype;      // of the logits (and of a float target)
  SegLabel labels;       // multiclass integer labels [N, M]; None: a mask [N, C, M] of dtype
  int64_t n, c, m;       // logits [N, C, M], contiguous
  const void* input;
  const void* target;
  int64_t mode;          // kSegBinary / kSegMulticlass / kSegMultilabel
  bool has_ignore;
  int64_t ignore_index;
  double focal_gamma;    // < 0: no focal term
  double focal_alpha;    // < 0: no alpha weighting
};

// Positions per chunk (one block): the forward's partial sums are per (row, chunk).
int64_t seg_chunks(int64_t m);

// part: scratch of rows * chunks * (C for multiclass, else 1) * W accumulators (float; double
// for double input), W = 6 with the focal term, else 4. stats [N, C, S] (S = 5 with the focal
// term, else 3) and xent [N, C] in the accumulation dtype. bad: two device int64, zeroed by the
// caller: {1, the label} when a multiclass label is outside [0, C) and not ignore_index (that
// position is then left out).
cudaError_t launch_seg_fwd(const SegLaunch& a, void* part, void* stats, void* xent, void* bad,
                           cudaStream_t stream);
// grad_stats [N, C, S], grad_xent [N, C] (accumulation dtype) -> grad [N, C, M] (input dtype).
cudaError_t launch_seg_bwd(const SegLaunch& a, const void* grad_stats, const void* grad_xent,
                           void* grad, cudaStream_t stream);
// The second stage (combine.h), one block, stats [N, C, S] / xent [N, C] contiguous of
// dtype (Float or Double), weights [C] of that dtype or nullptr. grad == nullptr: the loss to
// out (a scalar); else the backward with the device scalar *grad, to gstats and gxent.
cudaError_t launch_seg_combine(const SegCombine& q, DType dtype, const void* stats,
                               const void* xent, const void* weights, const void* grad, void* out, void* gstats,
                               void* gxent, cudaStream_t stream);

}  // namespace fastgenloss
