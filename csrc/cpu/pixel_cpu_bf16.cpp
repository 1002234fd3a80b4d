// The pixel-loss kernels for at::BFloat16 operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

namespace fastgenloss::pixel_cpu {
template void fwd_reduce<at::BFloat16>(const PixelOperands&, at::Tensor*, const PixelParams&, at::Tensor&,
                              at::Tensor*);
template void fwd_none<at::BFloat16>(const PixelOperands&, const PixelParams&, at::Tensor&);
template void bwd<at::BFloat16>(const at::Tensor&, const PixelOperands&, const at::Tensor&,
                       const at::Tensor&, const PixelParams&, at::Tensor*, at::Tensor*);
}  // namespace fastgenloss::pixel_cpu
