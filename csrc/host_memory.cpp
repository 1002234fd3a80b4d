// Fresh large CPU outputs on huge pages (see fastgenloss/host_memory.h).
#include "fastgenloss/host_memory.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastgenloss {

namespace {
std::atomic<bool> g_huge_pages{[] {
  const char* e = std::getenv("FASTGENLOSS_CPU_HUGE_PAGES");
  return !(e != nullptr && std::strcmp(e, "0") == 0);
}()};
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
}  // namespace

bool cpu_huge_pages_enabled() { return g_huge_pages.load(std::memory_order_relaxed); }
void set_cpu_huge_pages_enabled(bool on) { g_huge_pages.store(on, std::memory_order_relaxed); }

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!cpu_huge_pages_enabled() || !t.defined() || !t.is_cpu()) return;
  const int64_t bytes = int64_t(t.storage().nbytes());
  if (bytes < kHugePageMinBytes) return;
  const auto p = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t begin = (p + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (p + uintptr_t(bytes)) & ~(kHugePage - 1);
  // a failure (a kernel without THP, a mapping that refuses it) leaves 4 KiB pages: harmless
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

at::Tensor empty_like_output(const at::Tensor& like, const at::TensorOptions& options,
                             std::optional<at::MemoryFormat> format) {
  at::Tensor t = at::empty_like(like, options, format);
  advise_huge_pages(t);
  return t;
}

}  // namespace fastgenloss
