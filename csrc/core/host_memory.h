// Fresh large CPU outputs on huge pages.
//
// glibc serves every allocation of 32 MiB or more with a fresh mmap (its dynamic mmap threshold
// stops growing there), so a large gradient or loss map page-faults on first touch, 4 KiB at a
// time: a fresh write can take several times as long as one into touched memory, and the
// faults were most of the segmentation backward (docs/performance.md). With transparent huge
// pages in "madvise" mode (the kernel's default), MADV_HUGEPAGE on the fresh mapping makes
// those faults 2 MiB each. It is what
// torch's THP_MEM_ALLOC_ENABLE=1 does for all its large CPU tensors; here only the outputs our
// kernels write, and only mappings that belong to the one tensor (>= 32 MiB, the 2 MiB-aligned
// interior), so nothing else's memory changes. The switch cpu_huge_pages
// (fastgenloss/config.py) turns it off; elsewhere than Linux it does nothing.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fastgenloss {

// Tensors of at least this many bytes are advised (glibc's largest mmap threshold).
constexpr int64_t kHugePageMinBytes = int64_t(32) << 20;

// Advise t's storage for huge pages when t is a CPU tensor of >= kHugePageMinBytes that has not
// been written yet (call it right after allocating). A no-op otherwise, and on failure.
void advise_huge_pages(const at::Tensor& t);

// at::empty_like(like, options, format) advised as above: for outputs a kernel then writes in
// full.
at::Tensor empty_like_output(const at::Tensor& like, const at::TensorOptions& options = {},
                             std::optional<at::MemoryFormat> format = std::nullopt);

}  // namespace fastgenloss
