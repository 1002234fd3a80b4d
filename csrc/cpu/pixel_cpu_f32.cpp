// The pixel-loss kernels for float operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

namespace fastgenloss::pixel_cpu {
template void fwd_reduce<float>(const PixelOperands&, at::Tensor*, const PixelParams&, at::Tensor&,
                              at::Tensor*);
template void fwd_none<float>(const PixelOperands&, const PixelParams&, at::Tensor&);
template void bwd<float>(const at::Tensor&, const PixelOperands&, const at::Tensor&,
                       const at::Tensor&, const PixelParams&, at::Tensor*, at::Tensor*);
}  // namespace fastgenloss::pixel_cpu
