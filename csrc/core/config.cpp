// The compiled part's runtime switches (config.h), with their defaults; fastgenloss/config.py
// sets them from the environment at import.
#include "core/config.h"

#include <atomic>

namespace fastgenloss {

namespace {
constexpr int kSwitches = static_cast<int>(Switch::kCount);
constexpr const char* kNames[kSwitches] = {"cpu_huge_pages", "gram_cuda_kernel",
                                           "cuda_blocks_per_sm", "lovasz_cpu_kernel"};
std::atomic<int64_t> g_values[kSwitches] = {1, 0, 4, 1};
}  // namespace

const char* switch_name(int index) {
  return index >= 0 && index < kSwitches ? kNames[index] : nullptr;
}

int64_t get_switch(Switch s) {
  return g_values[static_cast<int>(s)].load(std::memory_order_relaxed);
}

void set_switch(Switch s, int64_t value) {
  g_values[static_cast<int>(s)].store(value, std::memory_order_relaxed);
}

}  // namespace fastgenloss
