# The style family's sources: Gram matrix, style loss, contextual loss (fgl_family:
# CMakeLists.txt).
fgl_family(style
  CPU ops.cpp contextual.cpp testing.cpp
  CUDA cuda.cpp kernels.cu)
