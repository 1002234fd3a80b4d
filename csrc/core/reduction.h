// Reduction codes shared by the op schemas (their int reduction argument), Python
// (fastgenloss/_core.py) and both backends. 0..2 match torch's at::Reduction (None, Mean, Sum);
// the weighted means are the pixel family's.
#pragma once

#include <cstdint>

namespace fastgenloss {

enum Reduction : int64_t {
  kReduceNone = 0,
  kReduceMean = 1,        // sum(w*l) / numel
  kReduceSum = 2,         // sum(w*l)
  kReduceWeightMean = 3,  // sum(w*l) / sum(w); 0/0 = NaN, as torch's weighted l1/mse
  kReduceMaskedMean = 4,  // sum(w*l) / sum(w); an all-zero mask gives 0 (inpainting)
};

}  // namespace fastgenloss
