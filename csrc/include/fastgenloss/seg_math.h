// Segmentation losses: the per-element math shared by the CPU and CUDA kernels.
//
// The kernels reduce logits and labels to per-(sample, class) statistics, P = sum p,
// T = sum t, A = sum |p - t| over the elements that are not ignored (smp's soft Tversky score:
// TP = (P + T - A) / 2), and X = the cross-entropy summed per (sample, class): BCE with logits
// per element in binary / multilabel mode, -log softmax at the label's class in multiclass mode
// (credited to that class). Every overlap loss (Dice, Jaccard, Tversky, any weights, per image
// or batch-wide) is a small function of these, formed in Python; backward receives
// dL/dP, dL/dA, dL/dX and runs one more pass over the logits.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastgenloss/pixel_math.h"  // FGL_HOST_DEVICE

namespace fastgenloss {

constexpr int64_t kSegBinary = 0, kSegMulticlass = 1, kSegMultilabel = 2;

// d|u|/du with torch's convention at 0 (sign(0) = 0)
template <typename T>
FGL_HOST_DEVICE T seg_sign(T u) {
  return u > T(0) ? T(1) : (u < T(0) ? T(-1) : T(0));
}

// sigmoid as exp(logsigmoid(x)) (smp's form), stable for large |x|
template <typename T>
FGL_HOST_DEVICE T seg_sigmoid(T x) {
  return x >= T(0) ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}

// binary cross-entropy with logits, torch's form: max(x, 0) - x t + log1p(exp(-|x|))
template <typename T>
FGL_HOST_DEVICE T seg_bce_with_logits(T x, T t) {
  return (x > T(0) ? x : T(0)) - x * t + std::log1p(std::exp(-std::fabs(x)));
}

// d/dx of a sigmoid element's share of the loss:
//   (dL/dP + dL/dA sign(p - t)) p (1 - p) + dL/dX (p - t)
template <typename T>
FGL_HOST_DEVICE T seg_sigmoid_grad(T p, T t, T gp, T ga, T gx) {
  return (gp + ga * seg_sign(p - t)) * p * (T(1) - p) + gx * (p - t);
}

}  // namespace fastgenloss
