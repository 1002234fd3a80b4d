// The gradient kernels of seg_stats for double logits (see seg_cpu.h).
#include "seg_cpu_kernels.h"

namespace fastgenloss::seg_cpu {
template void stats_bwd<double>(const BwdArgs& a);
}  // namespace fastgenloss::seg_cpu
