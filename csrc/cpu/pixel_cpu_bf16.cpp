// The pixel-loss kernels for at::BFloat16 operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

FGL_PIXEL_CPU_INSTANTIATE(at::BFloat16)
