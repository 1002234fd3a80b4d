// The pixel-loss kernels for double operands (see pixel_cpu.h).
#include "pixel_cpu_kernels.h"

FGL_PIXEL_CPU_INSTANTIATE(double)
