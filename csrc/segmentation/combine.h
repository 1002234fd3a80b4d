// The segmentation losses' second stage in one op: from the statistics of seg_stats (stats
// [N, C, S], xent [N, C]; see math.h) to the scalar loss, and its backward to the gradients
// of both. Without it the stage is some 45 small tensor ops forward and 60 backward, whose
// per-op overhead (about 1 ms a step on a GPU) costs more than the statistics kernel itself.
//
// Terms (each as fastgenloss.reference / smp compute them):
// - up to kSegMaxOverlap overlap terms w * L^g, L the mean (or sum) over classes -- or over
//   (sample, class) pairs per image -- of the Tversky loss of each class (with class weights
//   v_c: the sum of v_c x loss_c, over the sum of v_c for the mean),
//     TP = (P + T - A) / 2, FP = P - TP, FN = T - TP,
//     score = (TP + smooth) / max(TP + alpha FP + beta FN + smooth, eps),
//     loss = (1 - score, or -log max(score, eps)) * (T > 0);
//   Dice is alpha = beta = 1/2, Jaccard alpha = beta = 1;
// - bce * (sum of xent) / max(count, 1) (sum: without the division);
// - focal * smp's FocalLoss from the F, K columns: binary, sum F / max(sum K, 1) (sum: sum F);
//   otherwise the mean over classes of F_c / max(K_c, 1) (sum: of F_c), with class weights
//   the v_c-weighted mean (sum too: smp-style class weights always average).
// Class weights (``weights`` below, [C] in the statistics' dtype, or nullptr for all 1) weight
// the overlap and focal terms, never the cross-entropy.
// Work is split by class: one class's statistics and gradients are independent of the others'
// but for the terms' totals (L, sum F, sum K, sum xent), so the CPU loops over classes and the
// CUDA kernel gives each thread of one block its classes; both call the functions below.
// Everything is computed in double and stored in the statistics' dtype.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace fastgenloss {

constexpr int kSegMaxOverlap = 3;

struct SegCombine {
  int64_t n, c, s;              // stats [N, C, S] (S = 3, or 5 with the focal columns)
  int nterms;                   // overlap terms
  double w[kSegMaxOverlap], alpha[kSegMaxOverlap], beta[kSegMaxOverlap], gamma[kSegMaxOverlap];
  double bce, count, focal;     // bce: weight of the xent term (0: none); count: its divisor
  bool binary, per_image, sum, log_loss;
  double smooth, eps;
};

// One class's contribution to the terms' totals: tot[k] += v_c x its overlap loss k (summed
// over the samples per image), tot[3] += sum_n xent, and with the focal term tot[4] += sum_n F,
// tot[5] += sum_n K (binary), or tot[4] += v_c x its focal share F_c / max(K_c, 1) (F_c with
// sum); tot[6] += v_c (the class count without weights).
constexpr int kSegTotals = 7;

struct SegOverlapGrad {
  double loss, dp, dt, da;  // the masked loss and its derivatives in P, T, A
};

FGL_HOST_DEVICE SegOverlapGrad seg_overlap(double p, double t, double a, double alpha,
                                                  double beta, double smooth, double eps,
                                                  bool log_loss) {
  SegOverlapGrad r{0.0, 0.0, 0.0, 0.0};
  if (!(t > 0.0)) return r;  // absent class: loss 0 (torch: loss * (T > 0))
  const double tp = (p + t - a) * 0.5, fp = p - tp, fn = t - tp;
  const double num = tp + smooth;
  const double den_raw = tp + alpha * fp + beta * fn + smooth;
  const double den = den_raw > eps ? den_raw : eps;  // clamp_min: gradient where den_raw > eps
  const double score = num / den;
  double dscore;  // dloss / dscore
  if (log_loss) {
    const double sc = score > eps ? score : eps;
    r.loss = -std::log(sc);
    dscore = score > eps ? -1.0 / sc : 0.0;
  } else {
    r.loss = 1.0 - score;
    dscore = -1.0;
  }
  // d num / d(P, T, A) = (1, 1, -1) / 2; d den = ((1 + alpha - beta), (1 - alpha + beta),
  // (-1 + alpha + beta)) / 2 where den_raw > eps (torch's clamp_min passes no gradient at the bound)
  const double dnum = dscore / den;
  const double dden = den_raw > eps ? -dscore * num / (den * den) : 0.0;
  r.dp = 0.5 * (dnum + dden * (1.0 + alpha - beta));
  r.dt = 0.5 * (dnum + dden * (1.0 - alpha + beta));
  r.da = 0.5 * (-dnum + dden * (-1.0 + alpha + beta));
  return r;
}

template <typename T>
FGL_HOST_DEVICE double seg_at(const T* p, int64_t i) {
  return static_cast<double>(p[i]);
}

// class c's weight v_c (1 without class weights)
template <typename T>
FGL_HOST_DEVICE double seg_weight(const T* weights, int64_t c) {
  return weights == nullptr ? 1.0 : static_cast<double>(weights[c]);
}

// Class c's contribution to the totals (see kSegTotals).
template <typename T>
FGL_HOST_DEVICE void seg_combine_class(const SegCombine& q, const T* stats, const T* xent,
                                       const T* weights, int64_t c, double* tot) {
  const int64_t S = q.s, C = q.c;
  const double v = seg_weight(weights, c);
  double P = 0.0, Tt = 0.0, A = 0.0, F = 0.0, K = 0.0, X = 0.0;
  for (int64_t n = 0; n < q.n; ++n) {
    const int64_t i = (n * C + c) * S;
    if (q.per_image) {
      for (int k = 0; k < q.nterms; ++k) {
        tot[k] += v * seg_overlap(seg_at(stats, i), seg_at(stats, i + 1), seg_at(stats, i + 2),
                                  q.alpha[k], q.beta[k], q.smooth, q.eps, q.log_loss).loss;
      }
    } else {
      P += seg_at(stats, i);
      Tt += seg_at(stats, i + 1);
      A += seg_at(stats, i + 2);
    }
    X += seg_at(xent, n * C + c);
    if (S == 5) {
      F += seg_at(stats, i + 3);
      K += seg_at(stats, i + 4);
    }
  }
  if (!q.per_image) {
    for (int k = 0; k < q.nterms; ++k) {
      tot[k] += v * seg_overlap(P, Tt, A, q.alpha[k], q.beta[k], q.smooth, q.eps, q.log_loss).loss;
    }
  }
  tot[3] += X;
  if (S == 5 && q.focal != 0.0) {
    if (q.binary) {
      tot[4] += F;
      tot[5] += K;
    } else {
      tot[4] += v * (q.sum ? F : F / (K > 1.0 ? K : 1.0));
    }
  }
  tot[6] += v;
}

// The overlap terms' aggregated losses L_k from the totals (mean: over classes, or over
// (sample, class) pairs per image; weighted: over the weights' sum, times N per image).
FGL_HOST_DEVICE double seg_overlap_divisor(const SegCombine& q, const double* tot) {
  if (q.sum) return 1.0;
  return q.per_image ? static_cast<double>(q.n) * tot[6] : tot[6];
}

// x^g for a loss x >= 0 (up to rounding), and its derivative g x^(g-1), with the limits at 0
// (reference.power): 0^g = 0 and a zero derivative there (not g * inf, which times the zero
// derivative of a masked class gives NaN for g < 1); a negative rounding residue counts as 0;
// g = 0 gives 1 and derivative 0; NaN stays NaN
FGL_HOST_DEVICE double seg_pow(double x, double g) {
  if (g == 1.0) return x;
  if (g == 0.0) return 1.0;
  return x <= 0.0 ? 0.0 : std::pow(x, g);
}
FGL_HOST_DEVICE double seg_dpow(double x, double g) {
  if (g == 1.0) return 1.0;
  if (g == 0.0 || x <= 0.0) return 0.0;
  return g * std::pow(x, g - 1.0);
}

// The loss from the totals of every class.
FGL_HOST_DEVICE double seg_combine_total(const SegCombine& q, const double* tot) {
  const double div = seg_overlap_divisor(q, tot);
  double total = 0.0;
  for (int k = 0; k < q.nterms; ++k) total += q.w[k] * seg_pow(tot[k] / div, q.gamma[k]);
  if (q.bce != 0.0) total += q.bce * (q.sum ? tot[3] : tot[3] / (q.count > 1.0 ? q.count : 1.0));
  if (q.s == 5 && q.focal != 0.0) {
    if (q.binary) {
      total += q.focal * (q.sum ? tot[4] : tot[4] / (tot[5] > 1.0 ? tot[5] : 1.0));
    } else {
      total += q.focal * tot[4] / tot[6];
    }
  }
  return total;
}

// Class c's gradients: gstats[n, c, :] and gxent[n, c] for every sample n, given the totals
// of every class and the incoming gradient g of the loss.
template <typename T>
FGL_HOST_DEVICE void seg_combine_class_grad(const SegCombine& q, const T* stats,
                                            const T* weights, const double* tot, double g,
                                            int64_t c, T* gstats, T* gxent) {
  const int64_t S = q.s, C = q.c;
  const double v = seg_weight(weights, c);
  const double div = seg_overlap_divisor(q, tot);
  double dl[kSegMaxOverlap];
  for (int k = 0; k < q.nterms; ++k) dl[k] = g * q.w[k] * seg_dpow(tot[k] / div, q.gamma[k]) * v / div;
  const double gx = q.bce == 0.0 ? 0.0
                                 : g * q.bce * (q.sum ? 1.0 : 1.0 / (q.count > 1.0 ? q.count : 1.0));
  // the batch-wide statistics of class c, and its focal gradients
  double P = 0.0, Tt = 0.0, A = 0.0, F = 0.0, K = 0.0;
  for (int64_t n = 0; n < q.n; ++n) {
    const int64_t i = (n * C + c) * S;
    P += seg_at(stats, i);
    Tt += seg_at(stats, i + 1);
    A += seg_at(stats, i + 2);
    if (S == 5) {
      F += seg_at(stats, i + 3);
      K += seg_at(stats, i + 4);
    }
  }
  double gf = 0.0, gk = 0.0;
  if (S == 5 && q.focal != 0.0) {
    const double gw = g * q.focal;
    if (q.binary) {
      if (q.sum) {
        gf = gw;
      } else {
        const double ks = tot[5] > 1.0 ? tot[5] : 1.0;
        gf = gw / ks;
        gk = tot[5] > 1.0 ? -gw * tot[4] / (ks * ks) : 0.0;
      }
    } else {
      const double wc = gw * v / tot[6];
      if (q.sum) {
        gf = wc;
      } else {
        const double kc = K > 1.0 ? K : 1.0;
        gf = wc / kc;
        gk = K > 1.0 ? -wc * F / (kc * kc) : 0.0;
      }
    }
  }
  double bp = 0.0, bt = 0.0, ba = 0.0;
  if (!q.per_image) {
    for (int k = 0; k < q.nterms; ++k) {
      const SegOverlapGrad r = seg_overlap(P, Tt, A, q.alpha[k], q.beta[k], q.smooth, q.eps, q.log_loss);
      bp += dl[k] * r.dp;
      bt += dl[k] * r.dt;
      ba += dl[k] * r.da;
    }
  }
  for (int64_t n = 0; n < q.n; ++n) {
    const int64_t i = (n * C + c) * S;
    double dp = bp, dt = bt, da = ba;
    if (q.per_image) {
      for (int k = 0; k < q.nterms; ++k) {
        const SegOverlapGrad r = seg_overlap(seg_at(stats, i), seg_at(stats, i + 1),
                                             seg_at(stats, i + 2), q.alpha[k], q.beta[k],
                                             q.smooth, q.eps, q.log_loss);
        dp += dl[k] * r.dp;
        dt += dl[k] * r.dt;
        da += dl[k] * r.da;
      }
    }
    gstats[i] = static_cast<T>(dp);
    gstats[i + 1] = static_cast<T>(dt);
    gstats[i + 2] = static_cast<T>(da);
    if (S == 5) {
      gstats[i + 3] = static_cast<T>(gf);
      gstats[i + 4] = static_cast<T>(gk);
    }
    gxent[n * C + c] = static_cast<T>(gx);
  }
}

}  // namespace fastgenloss
