// Segmentation losses: the per-element math shared by the CPU and CUDA kernels.
//
// The kernels reduce logits and labels to per-(sample, class) statistics, P = sum p,
// T = sum t, A = sum |p - t| over the elements that are not ignored (smp's soft Tversky score:
// TP = (P + T - A) / 2), and X = the cross-entropy summed per (sample, class): BCE with logits
// per element in binary / multilabel mode, -log softmax at the label's class in multiclass mode
// (credited to that class). Every overlap loss (Dice, Jaccard, Tversky, any weights, per image
// or batch-wide) is a small function of these, formed in Python; backward receives
// dL/dP, dL/dA, dL/dX and runs one more pass over the logits.
//
// With the focal term on, two more statistics per (sample, class): F = the focal loss summed
// over the kept elements (sigmoid per channel, one-vs-rest in multiclass mode, as smp) and
// K = the number of kept elements, and backward also receives dL/dF.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

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

// The focal term of one sigmoid element, smp's focal_loss_with_logits: with l = BCE(x, t),
// p_t = exp(-l) and u = 1 - p_t, f = w u^gamma l, w = alpha t + (1 - alpha)(1 - t) (w = 1 when
// alpha < 0, smp's alpha=None). Returns f and writes df/dx = w (gamma u^(gamma-1) p_t l +
// u^gamma) (sigmoid(x) - t) to *dfdx. Inputs: e = exp(-|x|) and log1p(e) (the caller's exp /
// log1p: the CPU's vectorizable ones, or libm / CUDA's), GI = gamma when it is 1 or 2 (powers
// as products, branch-free), else -1 (pow). For a hard target u comes without cancellation:
// t = 1 -> u = sigmoid(-x), t = 0 -> u = sigmoid(x); a soft target takes 1 - exp(-l), whose
// absolute error (1 ulp of 1) is far below the sum it enters. At u = 0 the first part of the
// derivative is 0 for every gamma > 0 (it is O(u^gamma)), written out so that gamma < 1 gives
// no 0 * inf.
template <int GI, typename T, typename ExpFn>
FGL_HOST_DEVICE T seg_focal(T x, T t, T e, T log1p_e, T gamma, T alpha, T* dfdx, ExpFn exp_fn) {
  const T inv = T(1) / (T(1) + e);
  const T sig = (x >= T(0) ? T(1) : e) * inv;   // sigmoid(x)
  const T sigm = (x >= T(0) ? e : T(1)) * inv;  // sigmoid(-x) = 1 - sigmoid(x)
  const T l = (x > T(0) ? x : T(0)) - x * t + log1p_e;
  const T pt_soft = exp_fn(-l);
  const T u = t == T(1) ? sigm : (t == T(0) ? sig : T(1) - pt_soft);
  const T pt = t == T(1) ? sig : (t == T(0) ? sigm : pt_soft);
  T ug, dug;  // u^gamma and gamma u^(gamma - 1) p_t l
  if (GI == 2) {
    ug = u * u;
    dug = T(2) * u * pt * l;
  } else if (GI == 1) {
    ug = u;
    dug = pt * l;
  } else {
    ug = std::pow(u, gamma);
    dug = (gamma != T(0) && u > T(0)) ? gamma * std::pow(u, gamma - T(1)) * pt * l : T(0);
  }
  const T w = alpha < T(0) ? T(1) : alpha * t + (T(1) - alpha) * (T(1) - t);
  *dfdx = w * (dug + ug) * (sig - t);
  return w * ug * l;
}

}  // namespace fastgenloss
