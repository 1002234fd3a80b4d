# The segmentation family's sources (fgl_family: CMakeLists.txt).
fgl_family(segmentation
  CPU ops.cpp cpu.cpp combine.cpp lovasz.cpp mcc.cpp
  CUDA cuda.cpp kernels.cu
  PER_DTYPE "segmentation/cpu_kernels.h:FGL_SEG_CPU_INSTANTIATE_FWD"
            "segmentation/cpu_kernels.h:FGL_SEG_CPU_INSTANTIATE_BWD")
