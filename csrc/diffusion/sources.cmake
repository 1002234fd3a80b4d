# The diffusion family's sources (fgl_family: CMakeLists.txt).
fgl_family(diffusion
  CPU ops.cpp cpu.cpp autograd.cpp
  CUDA cuda.cpp kernels.cu)
