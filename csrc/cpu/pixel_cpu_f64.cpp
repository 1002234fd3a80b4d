// The pixel-loss kernels for double operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

namespace fastgenloss::pixel_cpu {
template void fwd_reduce<double>(const PixelOperands&, at::Tensor*, const PixelParams&, at::Tensor&,
                              at::Tensor*);
template void fwd_none<double>(const PixelOperands&, const PixelParams&, at::Tensor&);
template void bwd<double>(const at::Tensor&, const PixelOperands&, const at::Tensor&,
                       const at::Tensor&, const PixelParams&, at::Tensor*, at::Tensor*);
}  // namespace fastgenloss::pixel_cpu
