// The gradient kernels of seg_stats for float logits (see seg_cpu.h).
#include "seg_cpu_kernels.h"

namespace fastgenloss::seg_cpu {
template void stats_bwd<float>(const BwdArgs& a);
}  // namespace fastgenloss::seg_cpu
