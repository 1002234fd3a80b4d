// The compiled part's runtime switches. Their one documented home is fastgenloss/config.py: it
// reads the environment once at import and sets them here; the kernels only read them. Plain
// C++ (no torch), so that the CUDA launchers can read them too.
#pragma once

#include <cstdint>

namespace fastgenloss {

enum class Switch : int {
  kCpuHugePages = 0,    // advise fresh CPU outputs of >= 32 MiB for huge pages (host_memory.h)
  kGramCudaKernel = 1,  // the hand-written CUDA Gram kernel instead of cuBLAS (experimental)
  kCudaBlocksPerSm = 2, // blocks per SM of the reducing CUDA grids (1..32)
  kLovaszCpuKernel = 3, // the Lovász losses' radix-sort CPU kernel (else the ATen path)
  kCount = 4,
};

// The switch's name in fastgenloss.config, or nullptr for an unknown index.
const char* switch_name(int index);
int64_t get_switch(Switch s);
void set_switch(Switch s, int64_t value);

}  // namespace fastgenloss
