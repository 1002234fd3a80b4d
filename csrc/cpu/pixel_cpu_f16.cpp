// The pixel-loss kernels for at::Half operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

namespace fastgenloss::pixel_cpu {
template void fwd_reduce<at::Half>(const PixelOperands&, at::Tensor*, const PixelParams&, at::Tensor&,
                              at::Tensor*);
template void fwd_none<at::Half>(const PixelOperands&, const PixelParams&, at::Tensor&);
template void bwd<at::Half>(const at::Tensor&, const PixelOperands&, const at::Tensor&,
                       const at::Tensor&, const PixelParams&, at::Tensor*, at::Tensor*);
}  // namespace fastgenloss::pixel_cpu
