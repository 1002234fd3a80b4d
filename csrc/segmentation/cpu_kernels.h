// CPU kernels of the segmentation statistics (the math is math.h's), included only by the
// per-dtype translation units CMake generates (FGL_SEG_CPU_INSTANTIATE_* below).
//
// Input logits are [N, C, M] (M positions, any 2D / 3D extent), labels [N, M] (multiclass) or
// a mask [N, C, M]. Each sample's positions are cut into fixed chunks of kChunk; a chunk's
// partial sums (float) depend only on its elements and are added per sample in chunk order in
// double, so the statistics have the same bits for any thread count. Multiclass positions are
// processed kTile at a time: the softmax over C runs down the class rows of a tile, every inner
// loop over the tile's contiguous positions.
#pragma once

#include <ATen/ATen.h>

#include "segmentation/cpu_multiclass.h"
#include "segmentation/cpu_sigmoid.h"

namespace fastgenloss {
namespace seg_cpu {

template <typename scalar_t>
void stats_fwd(const FwdArgs& a) {
  if (a.mode == kSegMulticlass) {
    dispatch_label(a.target.scalar_type(), [&](auto tag) {
      using label_t = decltype(tag);
      multiclass_fwd<scalar_t, label_t>(a.input.data_ptr<scalar_t>(), a.target.data_ptr<label_t>(),
                                        a.n, a.c, a.m, a.has_ignore, a.ignore_index, a.part, a.nch,
                                        a.bad, a.focal, a.nhwc, a.label_smoothing);
    });
  } else {
    const at::Tensor t = a.target.scalar_type() == a.input.scalar_type()
                             ? a.target
                             : a.target.to(a.input.scalar_type());
    sigmoid_fwd<scalar_t, scalar_t>(a.input.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(),
                                    a.n * a.c, a.m, a.has_ignore, double(a.ignore_index), a.part,
                                    a.nch, a.focal, a.label_smoothing);
  }
}

template <typename scalar_t>
void stats_bwd(const BwdArgs& a) {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t* gs = a.grad_stats.data_ptr<acc_t>();
  const acc_t* gx = a.grad_xent.data_ptr<acc_t>();
  if (a.mode == kSegMulticlass) {
    dispatch_label(a.target.scalar_type(), [&](auto tag) {
      using label_t = decltype(tag);
      multiclass_bwd<scalar_t, label_t>(a.input.data_ptr<scalar_t>(), a.target.data_ptr<label_t>(),
                                        a.n, a.c, a.m, a.has_ignore, a.ignore_index, gs, gx,
                                        a.out.data_ptr<scalar_t>(), a.bad, a.focal, a.nhwc,
                                        a.label_smoothing);
    });
  } else {
    const at::Tensor t = a.target.scalar_type() == a.input.scalar_type()
                             ? a.target
                             : a.target.to(a.input.scalar_type());
    sigmoid_bwd<scalar_t, scalar_t>(a.input.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), a.n * a.c,
                                    a.m, a.has_ignore, double(a.ignore_index), gs, gx,
                                    a.out.data_ptr<scalar_t>(), a.focal, a.label_smoothing);
  }
}

}  // namespace seg_cpu
}  // namespace fastgenloss

// The entry points of one logits dtype T, forward and backward apart: CMake generates one
// translation unit for each (fgl_per_dtype in CMakeLists.txt), so that they compile in parallel.
#define FGL_SEG_CPU_INSTANTIATE_FWD(T) \
  namespace fastgenloss::seg_cpu {     \
  template void stats_fwd<T>(const FwdArgs& a); \
  }
#define FGL_SEG_CPU_INSTANTIATE_BWD(T) \
  namespace fastgenloss::seg_cpu {     \
  template void stats_bwd<T>(const BwdArgs& a); \
  }
