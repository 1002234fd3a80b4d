// Fresh large CPU outputs on huge pages (see host_memory.h).
#include "core/host_memory.h"

#include "core/config.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastgenloss {

namespace {
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
}  // namespace

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (get_switch(Switch::kCpuHugePages) == 0 || !t.defined() || !t.is_cpu()) return;
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
