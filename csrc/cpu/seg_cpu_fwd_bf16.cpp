// The forward statistics kernels of seg_stats for at::BFloat16 logits (see seg_cpu.h).
#include "seg_cpu_kernels.h"

namespace fastgenloss::seg_cpu {
template void stats_fwd<at::BFloat16>(const FwdArgs& a);
}  // namespace fastgenloss::seg_cpu
