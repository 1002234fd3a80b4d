// The CPU segmentation statistics kernels' shared declarations (see cpu_kernels.h).
//
// The kernels are instantiated per input dtype and direction in generated translation units
// (FGL_SEG_CPU_INSTANTIATE_FWD / _BWD): eight that compile in parallel, where one file of every
// variant would be the critical path of a cold build.
// cpu.cpp checks the arguments, dispatches on the dtype, and adds the chunk partials.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <vector>

namespace fastgenloss {
namespace seg_cpu {

constexpr const char* kOp = "fastgenloss::seg_stats";
constexpr int64_t kChunk = 4096;  // positions per deterministic partial sum
constexpr int64_t kTile = 64;     // multiclass positions handled together
constexpr int kLanes = 8;         // independent partial sums in a reduction loop

// The focal term's parameters; on = gamma >= 0 (Python passes -1 for "no focal term"), alpha
// < 0 is smp's alpha=None. With it on, stats grow from (P, T, A) to (P, T, A, F, K).
struct Focal {
  bool on;
  double gamma, alpha;
  int64_t stats() const { return on ? 5 : 3; }  // columns of stats / grad_stats
  int64_t part() const { return on ? 6 : 4; }   // columns of a chunk partial (+ X)
};

struct BadLabel {
  std::atomic<bool> seen{false};
  std::atomic<int64_t> value{0};
  void report(int64_t v) {
    bool expected = false;
    if (seen.compare_exchange_strong(expected, true)) value.store(v);
  }
};

// The arguments of one statistics pass (forward) over [N, C, M] logits.
struct FwdArgs {
  const at::Tensor& input;   // [N, C, M], contiguous or a channels_last view (nhwc)
  const at::Tensor& target;  // labels [N, M] (multiclass) or a mask [N, C, M]
  int64_t mode, n, c, m, nch;
  bool has_ignore;
  int64_t ignore_index;
  const Focal& focal;
  bool nhwc;
  std::vector<double>& part;  // chunk partials, added in cpu.cpp
  BadLabel& bad;
  double label_smoothing;     // of the cross-entropy column X only (see ops.cpp)
};

// The arguments of the gradient pass.
struct BwdArgs {
  const at::Tensor& input;
  const at::Tensor& target;
  int64_t mode, n, c, m;
  bool has_ignore;
  int64_t ignore_index;
  const at::Tensor& grad_stats;  // [N, C, S], the accumulation dtype, contiguous
  const at::Tensor& grad_xent;   // [N, C]
  at::Tensor& out;               // the logits' gradient, input's layout
  const Focal& focal;
  bool nhwc;
  BadLabel& bad;
  double label_smoothing;
};

// Defined in cpu_kernels.h, instantiated for float, double, at::Half and at::BFloat16.
template <typename scalar_t>
void stats_fwd(const FwdArgs& a);
template <typename scalar_t>
void stats_bwd(const BwdArgs& a);

}  // namespace seg_cpu
}  // namespace fastgenloss
