// The CPU statistics kernels of binary and multilabel segmentation (a sigmoid per element),
// forward and backward (cpu_kernels.h's stats_fwd / stats_bwd call them).
#pragma once

#include "segmentation/cpu_vector.h"

namespace fastgenloss {
namespace seg_cpu {
namespace {
// ---- binary / multilabel: sigmoid per element -----------------------------------------------

// One sigmoid element, branch-free (the loops over these vectorize in float): e = exp(-|v|) and
// lg = log1p(e), the two transcendental parts every sigmoid term shares (the focal term takes
// them too), p = sigmoid(v), p (1 - p) = e / (1 + e)^2 without cancellation, the BCE with
// logits.
template <typename acc_t>
struct SigmoidElem {
  acc_t e, lg, p, dp, bce;
  FGL_CPU_INLINE SigmoidElem(acc_t v, acc_t t) {
    e = exp_vec(-std::fabs(v));
    lg = log1p_unit(e);
    const acc_t inv = acc_t(1) / (acc_t(1) + e);
    p = (v >= acc_t(0) ? acc_t(1) : e) * inv;
    dp = e * inv * inv;
    bce = (v > acc_t(0) ? v : acc_t(0)) - v * t + lg;
  }
};

// The focal term of a sigmoid element from its shared parts. kHard: the target is 0 or 1, so
// seg_focal never uses p_t = exp(-BCE) of a soft target and the exp is not computed (a
// branch-free loop would compute it for every element).
template <int GI, bool kHard, typename acc_t>
FGL_CPU_INLINE acc_t sigmoid_focal(acc_t v, acc_t t, const SigmoidElem<acc_t>& s, acc_t gamma,
                                   acc_t alpha, acc_t* dfdx) {
  if constexpr (kHard) {
    return seg_focal<GI>(v, t, s.e, s.lg, gamma, alpha, dfdx, [](acc_t) { return acc_t(0); });
  } else {
    return seg_focal<GI>(v, t, s.e, s.lg, gamma, alpha, dfdx, [](acc_t u) { return exp_vec(u); });
  }
}

// Whether every kept target of tile [j0, j0 + len) is 0 or 1 (ignored ones enter as 0).
template <typename target_t, typename acc_t>
FGL_CPU_INLINE bool hard_tile(const target_t* tr, int64_t j0, int64_t len, bool has_ignore, acc_t ig) {
  int soft = 0;
  for (int64_t j = 0; j < len; ++j) {
    const acc_t t = acc_t(tr[j0 + j]);
    const acc_t tk = (has_ignore & (t == ig)) ? acc_t(0) : t;
    soft |= int(tk != acc_t(0)) & int(tk != acc_t(1));
  }
  return soft == 0;
}

// The elementwise part of one tile of kTile elements (vectorizes: no reductions, no branches):
// pk, tk, bk (and fk, kk with the focal term); an ignored element enters with keep = 0.
template <int FGI, bool kHard, typename scalar_t, typename target_t, typename acc_t>
FGL_CPU_INLINE void sigmoid_fwd_elems(const scalar_t* __restrict__ xr, const target_t* __restrict__ tr,
                                      int64_t len, bool has_ignore, acc_t ig, acc_t fg, acc_t fa,
                                      acc_t ls, acc_t* __restrict__ pk, acc_t* __restrict__ tk,
                                      acc_t* __restrict__ bk, acc_t* __restrict__ fk,
                                      acc_t* __restrict__ kk) {
  constexpr bool kFocal = FGI != 0;
  for (int64_t j = 0; j < len; ++j) {
    const acc_t v = acc_t(xr[j]), t = acc_t(tr[j]);
    const acc_t keep = (has_ignore & (t == ig)) ? acc_t(0) : acc_t(1);
    const acc_t tt = t * keep;
    const SigmoidElem<acc_t> e(v, tt);
    pk[j] = e.p * keep;
    tk[j] = tt;
    // BCE against the smoothed target tt (1 - ls) + (1 - tt) ls: linear in the target, the
    // BCE of tt minus ls (1 - 2 tt) v (exactly e.bce at ls = 0)
    bk[j] = (e.bce - ls * (acc_t(1) - acc_t(2) * tt) * v) * keep;
    if constexpr (kFocal) {
      acc_t unused;
      fk[j] = keep * sigmoid_focal<FGI, kHard>(v, tt, e, fg, fa, &unused);
      kk[j] = keep;
    }
  }
}

// One chunk [m0, m1) of a row: tiles of kTile elements, each an elementwise loop then kLanes
// independent partial sums; acc gets P, T, A, X (and F, K). One function per focal variant FGI
// (with_focal_variant), compiled for AVX2 and the baseline.
template <int FGI, typename scalar_t, typename target_t, typename acc_t>
FGL_CPU_MULTIVERSION void sigmoid_fwd_chunk(const scalar_t* xr, const target_t* tr, int64_t m0, int64_t m1,
                                      bool has_ignore, acc_t ig, acc_t fg, acc_t fa, acc_t ls,
                                      double* acc) {
  constexpr bool kFocal = FGI != 0;
  using V = typename LaneVec<acc_t>::V;
  V P{}, T{}, A{}, X{}, F{}, K{};  // kLanes partial sums each (see LaneVec)
  acc_t pk[kTile], tk[kTile], bk[kTile], fk[kTile], kk[kTile];
  for (int64_t j0 = m0; j0 < m1; j0 += kTile) {
    const int64_t len = std::min(kTile, m1 - j0);
    if (kFocal && hard_tile(tr, j0, len, has_ignore, ig)) {
      sigmoid_fwd_elems<FGI, true>(xr + j0, tr + j0, len, has_ignore, ig, fg, fa, ls, pk, tk, bk, fk, kk);
    } else {
      sigmoid_fwd_elems<FGI, false>(xr + j0, tr + j0, len, has_ignore, ig, fg, fa, ls, pk, tk, bk, fk, kk);
    }
    int64_t j = 0;
    for (; j + kLanes <= len; j += kLanes) {
      const V pv = load_lanes<V>(pk + j), tv = load_lanes<V>(tk + j);
      P += pv;
      T += tv;
      A += abs_lanes<acc_t>(pv - tv);
      X += load_lanes<V>(bk + j);
      if constexpr (kFocal) {
        F += load_lanes<V>(fk + j);
        K += load_lanes<V>(kk + j);
      }
    }
    for (; j < len; ++j) {
      P[0] += pk[j];
      T[0] += tk[j];
      A[0] += std::fabs(pk[j] - tk[j]);
      X[0] += bk[j];
      if constexpr (kFocal) {
        F[0] += fk[j];
        K[0] += kk[j];
      }
    }
  }
  for (int k = 0; k < (kFocal ? 6 : 4); ++k) acc[k] = 0.0;
  for (int q = 0; q < kLanes; ++q) {
    acc[0] += P[q];
    acc[1] += T[q];
    acc[2] += A[q];
    acc[3] += X[q];
    if constexpr (kFocal) {
      acc[4] += F[q];
      acc[5] += K[q];
    }
  }
}

// Tasks [begin, end) of sigmoid_fwd, one chunk a call. With the focal term: one pass, the focal
// loss from the same exp / log1p as the sigmoid and the BCE; tiles whose targets are all 0 / 1
// skip the soft-target exp.
template <typename scalar_t, typename target_t>
void sigmoid_fwd_range(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, std::vector<double>& part, int64_t nch, const Focal& focal,
                 double label_smoothing, int64_t begin, int64_t end) {
  using acc_t = acc_type_t<scalar_t>;
  // part: [rows, nch, W] (P, T, A, X[, F, K])
  const int64_t W = focal.part();
  const acc_t ig = acc_t(ignore), fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  const acc_t ls = acc_t(label_smoothing);
  with_focal_variant(focal, [&](auto fgi) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / nch, ch = task % nch;
      const int64_t m0 = ch * kChunk, m1 = std::min(m, m0 + kChunk);
      sigmoid_fwd_chunk<decltype(fgi)::value>(x + r * m, tg + r * m, m0, m1, has_ignore, ig, fg,
                                              fa, ls, part.data() + task * W);
    }
  });
}

template <typename scalar_t, typename target_t>
void sigmoid_fwd(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, std::vector<double>& part, int64_t nch, const Focal& focal,
                 double label_smoothing) {
  at::parallel_for(0, rows * nch, 1, [&](int64_t begin, int64_t end) {
    sigmoid_fwd_range<scalar_t, target_t>(x, tg, rows, m, has_ignore, ignore, part, nch, focal,
                                          label_smoothing, begin, end);
  });
}

// The gradient of one chunk [m0, m1) of a row, one function per focal variant FGI (compiled
// for AVX2 and the baseline). The focal gradient takes the sigmoid's exp / log1p; tiles of
// kTile whose targets are all 0 / 1 skip the soft-target exp.
template <int FGI, typename scalar_t, typename target_t, typename acc_t>
FGL_CPU_MULTIVERSION void sigmoid_bwd_chunk(const scalar_t* xr, const target_t* tr, scalar_t* orow,
                                            int64_t m0, int64_t m1, bool has_ignore, acc_t ig,
                                            acc_t fg, acc_t fa, acc_t gp, acc_t ga, acc_t gce,
                                            acc_t gf, acc_t ls) {
  constexpr bool kFocal = FGI != 0;
  auto tile = [&](auto hard, int64_t j0, int64_t j1) __attribute__((always_inline)) {
    constexpr bool kHard = decltype(hard)::value;
    for (int64_t j = j0; j < j1; ++j) {
      const acc_t v = acc_t(xr[j]), t = acc_t(tr[j]);
      const acc_t keep = (has_ignore & (t == ig)) ? acc_t(0) : acc_t(1);
      const acc_t tk = t * keep;
      const SigmoidElem<acc_t> s(v, tk);
      const acc_t u = s.p - tk;
      const acc_t sg = u > acc_t(0) ? acc_t(1) : (u < acc_t(0) ? acc_t(-1) : acc_t(0));
      // the BCE's gradient: p - the smoothed target = u - ls (1 - 2 tk) (u at ls = 0)
      acc_t d = (gp + ga * sg) * s.dp + gce * (u - ls * (acc_t(1) - acc_t(2) * tk));
      if constexpr (kFocal) {
        acc_t dfdx;
        sigmoid_focal<FGI, kHard>(v, tk, s, fg, fa, &dfdx);
        d = d + gf * dfdx;
      }
      orow[j] = scalar_t(keep * d);
    }
  };
  if constexpr (!kFocal) {
    tile(std::false_type{}, m0, m1);
  } else {
    for (int64_t j0 = m0; j0 < m1; j0 += kTile) {
      const int64_t len = std::min(kTile, m1 - j0);
      if (hard_tile(tr, j0, len, has_ignore, ig)) {
        tile(std::true_type{}, j0, j0 + len);
      } else {
        tile(std::false_type{}, j0, j0 + len);
      }
    }
  }
}

// Tasks [begin, end) of sigmoid_bwd, one chunk a call.
template <typename scalar_t, typename target_t, typename acc_t = acc_type_t<scalar_t>>
void sigmoid_bwd_range(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, const acc_t* gs, const acc_t* gx, scalar_t* out,
                 const Focal& focal, double label_smoothing, int64_t begin, int64_t end) {
  const int64_t nch = (m + kChunk - 1) / kChunk;
  const int64_t S = focal.stats();
  const acc_t ig = acc_t(ignore), fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  const acc_t ls = acc_t(label_smoothing);
  with_focal_variant(focal, [&](auto fgi) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / nch, ch = task % nch;
      const int64_t m0 = ch * kChunk, m1 = std::min(m, m0 + kChunk);
      const acc_t gp = gs[r * S + 0], ga = gs[r * S + 2], gce = gx[r];
      const acc_t gf = focal.on ? gs[r * S + 3] : acc_t(0);
      sigmoid_bwd_chunk<decltype(fgi)::value>(x + r * m, tg + r * m, out + r * m, m0, m1,
                                              has_ignore, ig, fg, fa, gp, ga, gce, gf, ls);
    }
  });
}

template <typename scalar_t, typename target_t, typename acc_t = acc_type_t<scalar_t>>
void sigmoid_bwd(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, const acc_t* gs, const acc_t* gx, scalar_t* out,
                 const Focal& focal, double label_smoothing) {
  const int64_t nch = (m + kChunk - 1) / kChunk;
  at::parallel_for(0, rows * nch, 1, [&](int64_t begin, int64_t end) {
    sigmoid_bwd_range<scalar_t, target_t>(x, tg, rows, m, has_ignore, ignore, gs, gx, out, focal,
                                          label_smoothing, begin, end);
  });
}

}  // namespace
}  // namespace seg_cpu
}  // namespace fastgenloss
