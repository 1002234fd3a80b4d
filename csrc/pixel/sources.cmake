# The pixel family's sources (fgl_family: CMakeLists.txt).
fgl_family(pixel
  CPU ops.cpp cpu.cpp autograd.cpp
  CUDA cuda.cpp kernels.cu
  PER_DTYPE "pixel/cpu_kernels.h:FGL_PIXEL_CPU_INSTANTIATE")
