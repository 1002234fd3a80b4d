// The segmentation ops' error for a label outside [0, C) that is not ignore_index: one message
// for the CPU kernel, the CUDA kernel (after its device-side flag) and seg_labels.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

namespace fastgenloss {

[[noreturn]] inline void seg_raise_bad_label(const char* op, int64_t c, bool has_ignore,
                                             int64_t ignore_index, int64_t value) {
  if (has_ignore) {
    TORCH_CHECK(false, op, ": labels must be in [0, ", c, ") or ignore_index (", ignore_index,
                "), got ", value);
  }
  TORCH_CHECK(false, op, ": labels must be in [0, ", c, "), got ", value,
              " (pass ignore_index for labels to leave out)");
}

}  // namespace fastgenloss
