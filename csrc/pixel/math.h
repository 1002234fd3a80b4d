// Pixel-loss math: the one definition of every term and its derivative, shared by the CPU
// kernels (cpu.cpp) and the CUDA kernels (kernels.cu).
//
// The fused loss of an element with difference d = input - target is
//     l(d) = a1*|d| + a2*d^2 + ac*sqrt(d^2 + eps^2) + ah*huber_delta(d) + as*smooth_l1_beta(d)
// and its weighted form is w*l(d). Terms whose coefficient is zero are never evaluated, so an
// infinite difference gives torch's answer (inf for l1, not 0*inf = NaN from an unused term).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"
#include "core/reduction.h"

namespace fastgenloss {

// Coefficients in the accumulation type (float for float/half/bfloat16, double for double).
template <typename acc_t>
struct PixelCoeffs {
  acc_t l1, mse, charbonnier, huber, smooth_l1;
  acc_t eps2;   // charbonnier eps^2
  acc_t delta;  // huber delta (> 0)
  acc_t beta;   // smooth-l1 beta (>= 0; 0 is plain l1, as in torch)
};

// Which term families are present; the CPU kernels specialize on these at compile time so a
// plain l1+mse loop has no sqrt and no select. The CUDA kernels pass the widest set: they are
// memory bound, and the zero-coefficient guards below keep the result exact.
// Piecewise levels: 0 none, 1 huber only, 2 huber and smooth-l1 (kept apart only when both are
// asked for with different thresholds: otherwise smooth_l1 is folded, see fold_smooth_l1).
constexpr int kPieceNone = 0, kPieceHuber = 1, kPieceBoth = 2;
struct PixelTermsUsed {
  bool sqrt_term;   // charbonnier
  int piecewise;    // kPieceNone, kPieceHuber or kPieceBoth
};

// smooth_l1_beta(d) = huber_beta(d) / beta for beta > 0, and |d| for beta = 0 (torch's
// definitions), so a smooth-l1 term becomes a huber or an l1 term: one select, no division per
// element. Returns the coefficients with smooth_l1 = 0 whenever that is possible.
template <typename acc_t>
FGL_HOST_DEVICE PixelCoeffs<acc_t> fold_smooth_l1(PixelCoeffs<acc_t> c) {
  if (c.smooth_l1 == acc_t(0)) return c;
  if (c.beta == acc_t(0)) {
    c.l1 += c.smooth_l1;
    c.smooth_l1 = acc_t(0);
  } else if (c.huber == acc_t(0) || c.delta == c.beta) {
    c.huber += c.smooth_l1 / c.beta;
    c.delta = c.beta;
    c.smooth_l1 = acc_t(0);
  }
  return c;
}

template <typename acc_t>
FGL_HOST_DEVICE PixelTermsUsed pixel_terms_used(const PixelCoeffs<acc_t>& c) {
  return {c.charbonnier != acc_t(0),
          c.smooth_l1 != acc_t(0) ? kPieceBoth : (c.huber != acc_t(0) ? kPieceHuber : kPieceNone)};
}

template <typename acc_t>
FGL_HOST_DEVICE acc_t fgl_abs(acc_t v) { return v < acc_t(0) ? -v : v; }

// sign(0) = 0, as torch. Branch-free (two compares), so CPU loops vectorize and random signs
// cost no mispredictions.
template <typename acc_t>
FGL_HOST_DEVICE acc_t fgl_sign(acc_t v) {
  return acc_t(v > acc_t(0)) - acc_t(v < acc_t(0));
}

// Adds coef*term, or nothing when coef is 0 (so 0 * inf never makes a NaN). Written as a select
// of values computed unconditionally, so CPU loops vectorize into blends.
template <typename acc_t>
FGL_HOST_DEVICE acc_t fgl_term(acc_t coef, acc_t term) {
  return coef != acc_t(0) ? coef * term : acc_t(0);
}

// l(d): the unweighted loss of one element.
template <bool kSqrt, int kPiecewise, typename acc_t>
FGL_HOST_DEVICE acc_t pixel_value(const PixelCoeffs<acc_t>& c, acc_t d) {
  const acc_t ad = fgl_abs(d);
  const acc_t d2 = d * d;
  acc_t v = fgl_term(c.l1, ad) + fgl_term(c.mse, d2);
  if constexpr (kSqrt) v += fgl_term(c.charbonnier, std::sqrt(d2 + c.eps2));
  if constexpr (kPiecewise >= kPieceHuber) {
    // torch: |d| < delta ? 0.5 d^2 : delta (|d| - 0.5 delta)
    v += fgl_term(c.huber, ad < c.delta ? acc_t(0.5) * d2 : c.delta * (ad - acc_t(0.5) * c.delta));
  }
  if constexpr (kPiecewise >= kPieceBoth) {
    // torch: |d| < beta ? 0.5 d^2 / beta : |d| - 0.5 beta   (beta = 0 is l1: the first branch
    // is never taken, so its division by zero is never selected)
    v += fgl_term(c.smooth_l1, ad < c.beta ? acc_t(0.5) * d2 / c.beta : ad - acc_t(0.5) * c.beta);
  }
  return v;
}

// dl/dd: the unweighted derivative; d/dinput = +dl/dd, d/dtarget = -dl/dd.
template <bool kSqrt, int kPiecewise, typename acc_t>
FGL_HOST_DEVICE acc_t pixel_deriv(const PixelCoeffs<acc_t>& c, acc_t d) {
  const acc_t sgn = fgl_sign(d);
  acc_t g = fgl_term(c.l1, sgn) + fgl_term(c.mse, acc_t(2) * d);
  if constexpr (kSqrt) {
    const acc_t r = std::sqrt(d * d + c.eps2);
    g += fgl_term(c.charbonnier, r > acc_t(0) ? d / r : acc_t(0));  // eps = d = 0: subgradient 0
  }
  if constexpr (kPiecewise >= kPieceHuber) {
    // torch: clamp(d, -delta, delta)
    g += fgl_term(c.huber, d < -c.delta ? -c.delta : (d > c.delta ? c.delta : d));
  }
  if constexpr (kPiecewise >= kPieceBoth) {
    // torch: |d| < beta ? d / beta : sign(d)
    g += fgl_term(c.smooth_l1, fgl_abs(d) < c.beta ? d / c.beta : sgn);
  }
  return g;
}

// The loss of a scalar reduction from the weighted sum `total`, the sum of weights `wsum` (only
// read by the weight-normalized means) and the element count.
template <typename acc_t>
FGL_HOST_DEVICE acc_t pixel_reduce_finish(int64_t reduction, acc_t total, acc_t wsum, int64_t numel) {
  switch (reduction) {
    case kReduceMean: return total / acc_t(numel);  // numel 0: 0/0 = NaN, as torch
    case kReduceWeightMean: return total / wsum;
    case kReduceMaskedMean: return wsum == acc_t(0) ? acc_t(0) : total / wsum;
    default: return total;  // sum
  }
}

// For a scalar-reducing op, d(loss)/d(input_i) = post * round(pre * w_i * dl/dd): the forward
// writes round(pre * w * dl/dd) (pre is known then) and backward scales it by post (which needs
// grad_output, and sum(w) for the weight-normalized means). pixel_bwd rounds the same way, so a
// second backward through it (retain_graph) gives the same bits as the first.
template <typename acc_t>
FGL_HOST_DEVICE acc_t pixel_grad_pre_scale(int64_t reduction, int64_t numel) {
  return reduction == kReduceMean ? acc_t(1) / acc_t(numel) : acc_t(1);
}

template <typename acc_t>
FGL_HOST_DEVICE acc_t pixel_grad_post_scale(int64_t reduction, acc_t grad_out, acc_t wsum) {
  if (reduction == kReduceWeightMean) return grad_out / wsum;
  if (reduction == kReduceMaskedMean) return wsum == acc_t(0) ? acc_t(0) : grad_out / wsum;
  return grad_out;  // mean, sum
}

// The factor that turns grad_output into d(loss)/d(w*l) for a scalar-reducing op.
template <typename acc_t>
FGL_HOST_DEVICE acc_t pixel_reduce_scale(int64_t reduction, acc_t grad_out, acc_t wsum, int64_t numel) {
  return pixel_grad_pre_scale<acc_t>(reduction, numel) * pixel_grad_post_scale(reduction, grad_out, wsum);
}

// d(loss)/d(w_i) for one element, given the scale above: for sum/mean it is scale*l_i; for the
// weight-normalized means, loss = sum(w l)/sum(w), so it is (l_i - loss)*grad_out/sum(w).
template <typename acc_t>
FGL_HOST_DEVICE acc_t pixel_weight_grad(int64_t reduction, acc_t scale, acc_t l, acc_t loss) {
  if (reduction == kReduceWeightMean || reduction == kReduceMaskedMean) return scale * (l - loss);
  return scale * l;
}

}  // namespace fastgenloss
