// CPU kernels of the segmentation statistics (see fastgenloss/seg_math.h), included only by
// the per-dtype instantiation files seg_cpu_{fwd,bwd}_<dtype>.cpp.
//
// Input logits are [N, C, M] (M positions, any 2D / 3D extent), labels [N, M] (multiclass) or
// a mask [N, C, M]. Each sample's positions are cut into fixed chunks of kChunk; a chunk's
// partial sums (float) depend only on its elements and are added per sample in chunk order in
// double, so the statistics have the same bits for any thread count. Multiclass positions are
// processed kTile at a time: the softmax over C runs down the class rows of a tile, every inner
// loop over the tile's contiguous positions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "seg_cpu.h"
#include "fastgenloss/seg_math.h"

namespace fastgenloss {
namespace seg_cpu {
namespace {


// exp for the softmax: range reduction to r in [-ln2/2, ln2/2] (n = round(x log2 e) by the
// 1.5 * 2^23 trick, exact for |x log2 e| < 2^22), a degree-6 polynomial for e^r (Cephes'
// expf coefficients, relative error ~1e-7 = 1 ulp of float) and 2^n put into the exponent
// bits: branch-free, so the compiler vectorizes the loops that call it (std::exp is a scalar
// libm call). Inputs here are x - max <= 0; below -87 the result flushes to 0 as expf's
// underflow does (to within its denormal range).
FGL_SEG_INLINE float exp_vec(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shift = 12582912.0f;  // 1.5 * 2^23
  const float fn = (x * 1.44269504088896341f + shift) - shift;
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  // degree-5 polynomial in Estrin's form (shorter dependency chain than Horner's)
  const float r2 = r * r, r4 = r2 * r2;
  const float e0 = 5.0000001201e-1f + 1.6666665459e-1f * r;
  const float e1 = 4.1665795894e-2f + 8.3334519073e-3f * r;
  const float e2 = 1.3981999507e-3f + 1.9875691500e-4f * r;
  float p = (e0 + e1 * r2) + e2 * r4;
  p = p * r2 + r + 1.0f;
  int32_t bits;
  const int32_t e = (int32_t(fn) + 127) << 23;
  std::memcpy(&bits, &p, sizeof bits);
  bits += e - (127 << 23);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
FGL_SEG_INLINE double exp_vec(double x) { return std::exp(x); }

// kLanes partial sums as one GCC vector (an AVX2 register of floats, two of doubles), for the
// reductions GCC's SLP vectorizer left scalar when written as arrays: the same operations per
// lane in the same order as the array form, so the same bits. M: the matching integer lanes.
// (always inlined into the AVX2 and the baseline clones: GCC's note that a 32-byte vector
// return changes the ABI without AVX does not apply)
#pragma GCC diagnostic ignored "-Wpsabi"
static_assert(kLanes == 8, "the lane vectors below hold 8 elements");
template <typename T> struct LaneVec;
template <> struct LaneVec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));
};
template <> struct LaneVec<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t M __attribute__((vector_size(64)));
};
typedef int32_t Int32x8 __attribute__((vector_size(32)));

template <typename V, typename T>
FGL_SEG_INLINE V load_lanes(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// |v| lane by lane: the sign bit cleared, as std::fabs
template <typename T>
FGL_SEG_INLINE typename LaneVec<T>::V abs_lanes(const typename LaneVec<T>::V& v) {
  using M = typename LaneVec<T>::M;
  M bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= ~((M{} + 1) << (8 * sizeof(T) - 1));
  typename LaneVec<T>::V out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// log1p(e) for e in [0, 1], branch-free: for 1 + e <= sqrt 2, x = e itself (no rounding of
// 1 + e), else x = (1 + e) / 2 - 1 and ln 2 added; log(1 + x) for x in [sqrt(1/2) - 1,
// sqrt 2 - 1] by Cephes' logf polynomial. Max relative error 1.2e-7 (1 ulp) over [0, 1]
// against log1p in double, denormal e included.
FGL_SEG_INLINE float log1p_unit(float e) {
  const bool hi = e > 0.41421356f;
  const float x = hi ? (e - 1.0f) * 0.5f : e;
  // the degree-8 polynomial in Estrin's form: a dependency chain of ~5 operations instead of
  // Horner's 16 (the loops calling this are bound by that latency, not by throughput)
  const float z = x * x, z2 = z * z, z4 = z2 * z2;
  const float q0 = 3.3333331174e-1f - 2.4999993993e-1f * x;
  const float q1 = 2.0000714765e-1f - 1.6668057665e-1f * x;
  const float q2 = 1.4249322787e-1f - 1.2420140846e-1f * x;
  const float q3 = 1.1676998740e-1f - 1.1514610310e-1f * x;
  const float p = ((q0 + q1 * z) + (q2 + q3 * z) * z2) + 7.0376836292e-2f * z4;
  return x + (p * x * z - 0.5f * z) + (hi ? 0.693147180559945f : 0.0f);
}
FGL_SEG_INLINE double log1p_unit(double e) { return std::log1p(e); }

// log(s) for the softmax denominator s >= 1 (a finite float), branch-free so the loop over a
// tile's positions vectorizes (std::log is a scalar libm call per position): s = 2^n (1 + f),
// f in [0, 1) exact from the bits, log s = n ln 2 + log1p_unit(f), ln 2 in two parts so n ln 2
// adds no rounding of its own. Within 2 ulp of logf over [1, 2^24].
FGL_SEG_INLINE float log_ge1(float s) {
  int32_t bits;
  std::memcpy(&bits, &s, sizeof bits);
  const float n = float((bits >> 23) - 127);
  bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &bits, sizeof m);
  return n * 0.693145751953125f + (n * 1.42860682030941723212e-6f + log1p_unit(m - 1.0f));
}
FGL_SEG_INLINE double log_ge1(double s) { return std::log(s); }

// The one-vs-rest focal term of one multiclass element (seg_math.h's seg_focal) with the exp /
// log1p above; GI = 2, 1 or -1 (general gamma, std::pow: scalar). The target is 0 or 1, where
// seg_focal never uses p_t = exp(-BCE) of a soft target, so that exp is not computed (a
// branch-free loop would compute it for every element).
template <int GI, typename acc_t>
FGL_SEG_INLINE acc_t focal_elem_hard(acc_t x, acc_t t, acc_t gamma, acc_t alpha, acc_t* dfdx) {
  const acc_t e = exp_vec(-std::fabs(x));
  return seg_focal<GI>(x, t, e, log1p_unit(e), gamma, alpha, dfdx, [](acc_t) { return acc_t(0); });
}


// Calls fn with the kernels' focal variant as std::integral_constant<int, FGI>: FGI = 0 without
// the focal term, else seg_focal's GI (2 or 1: powers as products; -1: general gamma, pow).
// Each variant is its own AVX2 function: inlined into one function, the variants' polynomial
// constants outgrew the 16 vector registers and spilled (20% slower without the focal term).
template <typename Fn>
void with_focal_variant(const Focal& focal, Fn&& fn) {
  if (!focal.on) {
    fn(std::integral_constant<int, 0>{});
  } else if (focal.gamma == 2.0) {
    fn(std::integral_constant<int, 2>{});
  } else if (focal.gamma == 1.0) {
    fn(std::integral_constant<int, 1>{});
  } else {
    fn(std::integral_constant<int, -1>{});
  }
}


template <typename F>
void dispatch_label(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kByte: f(uint8_t{}); break;
    case at::kChar: f(int8_t{}); break;
    case at::kShort: f(int16_t{}); break;
    case at::kInt: f(int32_t{}); break;
    case at::kLong: f(int64_t{}); break;
    default: TORCH_CHECK(false, kOp, ": labels must be an integer tensor, got ", t);
  }
}


// ---- multiclass: softmax over C -------------------------------------------------------------

// One tile of positions [m0, m0 + len) of sample b: its logits gathered into raw ([C, kTile],
// from class rows of [N, C, M] memory, or transposed from the [N, M, C] memory of channels_last
// logits), the softmax (into e, [C, kTile]), and per position the label, whether it counts, log
// of the softmax denominator plus the max.
template <typename scalar_t, typename label_t>
struct Tile {
  using acc_t = acc_type_t<scalar_t>;
  std::vector<acc_t> raw;  // [C][kTile] logits
  std::vector<acc_t> e;  // [C][kTile] softmax probabilities
  acc_t lse[kTile];      // max + log(sum exp)
  int64_t lbl[kTile];
  bool valid[kTile];
  acc_t vf[kTile];       // valid as 1 / 0
  int32_t lbl32[kTile];  // the label where valid, else -1

  explicit Tile(int64_t c) : raw(size_t(c) * kTile), e(size_t(c) * kTile) {}

  // the logits of class k at the tile's positions: in place for float / double [N, C, M]
  // memory, else gathered (converted, or transposed from [N, M, C]) into raw
  const acc_t* base = nullptr;
  int64_t kstride = kTile;
  FGL_SEG_INLINE const acc_t* logits(int64_t k) const { return base + k * kstride; }

  FGL_SEG_INLINE void load(const scalar_t* x, const label_t* lab, int64_t c, int64_t m, int64_t m0, int64_t len,
            bool has_ignore, int64_t ignore, BadLabel& bad, bool nhwc) {
    if (nhwc) {
      base = raw.data();
      kstride = kTile;
      for (int64_t t = 0; t < len; ++t) {
        const scalar_t* px = x + (m0 + t) * c;
        for (int64_t k = 0; k < c; ++k) raw[k * kTile + t] = acc_t(px[k]);
      }
    } else {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        base = x + m0;
        kstride = m;
      } else {
        base = raw.data();
        kstride = kTile;
        for (int64_t k = 0; k < c; ++k) {
          const scalar_t* row = x + k * m + m0;
          acc_t* rk = raw.data() + k * kTile;
          for (int64_t t = 0; t < len; ++t) rk[t] = acc_t(row[t]);
        }
      }
    }
    acc_t mx[kTile], s[kTile];
    for (int64_t t = 0; t < len; ++t) mx[t] = -std::numeric_limits<acc_t>::infinity();
    for (int64_t k = 0; k < c; ++k) {
      const acc_t* row = logits(k);
      for (int64_t t = 0; t < len; ++t) {
        const acc_t v = row[t];
        mx[t] = v > mx[t] ? v : mx[t];
      }
    }
    for (int64_t t = 0; t < len; ++t) s[t] = 0.f;
    for (int64_t k = 0; k < c; ++k) {
      const acc_t* row = logits(k);
      acc_t* ek = e.data() + k * kTile;
      for (int64_t t = 0; t < len; ++t) {
        ek[t] = exp_vec(row[t] - mx[t]);
        s[t] += ek[t];
      }
    }
    acc_t inv[kTile];
    for (int64_t t = 0; t < len; ++t) {
      inv[t] = acc_t(1) / s[t];
      lse[t] = mx[t] + log_ge1(s[t]);
    }
    for (int64_t k = 0; k < c; ++k) {
      acc_t* ek = e.data() + k * kTile;
      for (int64_t t = 0; t < len; ++t) ek[t] *= inv[t];
    }
    for (int64_t t = 0; t < len; ++t) {
      const int64_t l = int64_t(lab[m0 + t]);
      const bool ign = has_ignore && l == ignore;
      const bool bad_label = !ign && (l < 0 || l >= c);
      if (bad_label) bad.report(l);
      valid[t] = !ign && !bad_label;
      lbl[t] = valid[t] ? l : 0;
      vf[t] = valid[t] ? acc_t(1) : acc_t(0);
      lbl32[t] = valid[t] ? int32_t(l) : int32_t(-1);  // -1: matches no class
    }
  }
};

// Tasks [begin, end) of multiclass_fwd: compiled for AVX2 and the baseline (FGL_CPU_MULTIVERSION),
// one function per focal variant FGI (with_focal_variant).
template <int FGI, typename scalar_t, typename label_t>
FGL_CPU_MULTIVERSION void multiclass_fwd_range(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, std::vector<double>& part, int64_t nch,
                    BadLabel& bad, const Focal& focal, bool nhwc, double label_smoothing,
                    int64_t begin, int64_t end) {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t ls = acc_t(label_smoothing), inv_c = acc_t(1) / acc_t(c);
  // part: [N, nch, C, W] (P, T, A, X[, F, K])
  const int64_t W = focal.part();
  const acc_t fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  Tile<scalar_t, label_t> tile(c);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / nch, ch = task % nch;
    const scalar_t* xb = x + b * c * m;
    const label_t* lb = lab + b * m;
    double* acc = part.data() + task * c * W;
    std::fill(acc, acc + c * W, 0.0);
    const int64_t m1 = std::min(m, (ch + 1) * kChunk);
    for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
      const int64_t len = std::min(kTile, m1 - m0);
      tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad, nhwc);
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        // kLanes independent partial sums (one lane vector each): no reassociation
        using V = typename LaneVec<acc_t>::V;
        using M = typename LaneVec<acc_t>::M;
        V P{}, T{}, A{};
        const M kl = M{} + int32_t(k);
        int64_t t = 0;
        for (; t + kLanes <= len; t += kLanes) {
          const V pv = load_lanes<V>(ek + t) * load_lanes<V>(tile.vf + t);
          const M lv = __builtin_convertvector(load_lanes<Int32x8>(tile.lbl32 + t), M);
          const V tv = lv == kl ? V{} + acc_t(1) : V{};
          P += pv;
          T += tv;
          A += abs_lanes<acc_t>(pv - tv);
        }
        for (; t < len; ++t) {
          const acc_t pv = ek[t] * tile.vf[t];
          const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
          P[0] += pv;
          T[0] += tv;
          A[0] += std::fabs(pv - tv);
        }
        for (int q = 0; q < kLanes; ++q) {
          acc[k * W + 0] += P[q];
          acc[k * W + 1] += T[q];
          acc[k * W + 2] += A[q];
        }
        if constexpr (FGI != 0) {  // one-vs-rest sigmoid focal term of class k
          const acc_t* row = tile.logits(k);
          acc_t fk[kTile];
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            acc_t unused;
            fk[t] = tile.vf[t] * focal_elem_hard<FGI>(acc_t(row[t]), tv, fg, fa, &unused);
          }
          V Fs{}, Ks{};
          int64_t t = 0;
          for (; t + kLanes <= len; t += kLanes) {
            Fs += load_lanes<V>(fk + t);
            Ks += load_lanes<V>(tile.vf + t);
          }
          for (; t < len; ++t) {
            Fs[0] += fk[t];
            Ks[0] += tile.vf[t];
          }
          for (int q = 0; q < kLanes; ++q) {
            acc[k * W + 4] += Fs[q];
            acc[k * W + 5] += Ks[q];
          }
        }
      }
      if (ls == acc_t(0)) {
        for (int64_t t = 0; t < len; ++t) {
          if (!tile.valid[t]) continue;
          const int64_t l = tile.lbl[t];
          acc[l * W + 3] += tile.lse[t] - tile.logits(l)[t];  // -log softmax_l
        }
      } else {
        // smoothed: (1 - ls)(-log softmax_l) + ls mean_k(-log softmax_k), mean_k(-log softmax_k)
        // = lse - mean_k x_k, credited to the label's class as the unsmoothed term is
        acc_t xs[kTile];
        for (int64_t t = 0; t < len; ++t) xs[t] = acc_t(0);
        for (int64_t k = 0; k < c; ++k) {
          const acc_t* row = tile.logits(k);
          for (int64_t t = 0; t < len; ++t) xs[t] += row[t];
        }
        for (int64_t t = 0; t < len; ++t) {
          if (!tile.valid[t]) continue;
          const int64_t l = tile.lbl[t];
          acc[l * W + 3] += (acc_t(1) - ls) * (tile.lse[t] - tile.logits(l)[t]) +
                            ls * (tile.lse[t] - xs[t] * inv_c);
        }
      }
    }
  }
}

template <typename scalar_t, typename label_t>
void multiclass_fwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, std::vector<double>& part, int64_t nch,
                    BadLabel& bad, const Focal& focal, bool nhwc, double label_smoothing) {
  with_focal_variant(focal, [&](auto fgi) {
    at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
      multiclass_fwd_range<decltype(fgi)::value, scalar_t, label_t>(
          x, lab, n, c, m, has_ignore, ignore, part, nch, bad, focal, nhwc, label_smoothing,
          begin, end);
    });
  });
}

// Tasks [begin, end) of multiclass_bwd: compiled for AVX2 and the baseline (FGL_CPU_MULTIVERSION),
// one function per focal variant FGI (with_focal_variant).
template <int FGI, typename scalar_t, typename label_t, typename acc_t = acc_type_t<scalar_t>>
FGL_CPU_MULTIVERSION void multiclass_bwd_range(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, const acc_t* gs, const acc_t* gx,
                    scalar_t* out, BadLabel& bad, const Focal& focal, bool nhwc,
                    double label_smoothing, int64_t begin, int64_t end) {
  // gs: [N, C, S] (dL/dP, dL/dT, dL/dA[, dL/dF, dL/dK]); gx: [N, C] (dL/dX)
  // the cross-entropy's gradient is p - the smoothed target (1 - ls) t + ls / C (exactly t at
  // ls = 0)
  const acc_t keep1 = acc_t(1 - label_smoothing), lsc = acc_t(label_smoothing / double(c));
  const int64_t S = focal.stats();
  const acc_t fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  const int64_t nch = (m + kChunk - 1) / kChunk;
  Tile<scalar_t, label_t> tile(c);
  std::vector<acc_t> g(size_t(c) * kTile);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / nch, ch = task % nch;
    const scalar_t* xb = x + b * c * m;
    const label_t* lb = lab + b * m;
    scalar_t* ob = out + b * c * m;
    const acc_t* gsb = gs + b * c * S;
    const acc_t* gxb = gx + b * c;
    const int64_t m1 = std::min(m, (ch + 1) * kChunk);
    for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
      const int64_t len = std::min(kTile, m1 - m0);
      tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad, nhwc);
      acc_t dot[kTile], gce[kTile];
      for (int64_t t = 0; t < len; ++t) {
        dot[t] = acc_t(0);
        gce[t] = gxb[tile.lbl[t]] * tile.vf[t];
      }
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        acc_t* gk = g.data() + k * kTile;
        const acc_t gp = gsb[k * S + 0], ga = gsb[k * S + 2];
        for (int64_t t = 0; t < len; ++t) {
          const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
          const acc_t u = ek[t] - tv;
          const acc_t v = gp + ga * (u > acc_t(0) ? acc_t(1) : (u < acc_t(0) ? acc_t(-1) : acc_t(0)));
          gk[t] = v;
          dot[t] += ek[t] * v;
        }
      }
      // the gradient of class k's row: into the output's row (NCHW), or back into g (NHWC:
      // written out transposed below)
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        acc_t* gk = g.data() + k * kTile;
        scalar_t* orow = ob + k * m + m0;
        if constexpr (FGI == 0) {
          auto grad = [&](int64_t t) __attribute__((always_inline)) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            // ignored positions: vf = 0 zeroes both parts (gce already carries vf)
            return ek[t] * (gk[t] - dot[t]) * tile.vf[t] + gce[t] * (ek[t] - (tv * keep1 + lsc));
          };
          if (!nhwc) {
            for (int64_t t = 0; t < len; ++t) orow[t] = scalar_t(grad(t));
          } else {
            for (int64_t t = 0; t < len; ++t) gk[t] = grad(t);
          }
        } else {  // plus the one-vs-rest focal term's gradient
          const acc_t gf = gsb[k * S + 3];
          const acc_t* row = tile.logits(k);
          // the focal derivative in a loop of its own: fused with the softmax part, the
          // polynomials' constants and the loop's operands outgrew the 16 vector registers
          acc_t df[kTile];
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            focal_elem_hard<FGI>(row[t], tv, fg, fa, &df[t]);
          }
          auto grad = [&](int64_t t) __attribute__((always_inline)) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            return (ek[t] * (gk[t] - dot[t]) + gf * df[t]) * tile.vf[t] +
                   gce[t] * (ek[t] - (tv * keep1 + lsc));
          };
          if (!nhwc) {
            for (int64_t t = 0; t < len; ++t) orow[t] = scalar_t(grad(t));
          } else {
            for (int64_t t = 0; t < len; ++t) gk[t] = grad(t);
          }
        }
      }
      if (nhwc) {
        for (int64_t t = 0; t < len; ++t) {
          scalar_t* po = ob + (m0 + t) * c;
          for (int64_t k = 0; k < c; ++k) po[k] = scalar_t(g[k * kTile + t]);
        }
      }
    }
  }
}

template <typename scalar_t, typename label_t, typename acc_t = acc_type_t<scalar_t>>
void multiclass_bwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, const acc_t* gs, const acc_t* gx,
                    scalar_t* out, BadLabel& bad, const Focal& focal, bool nhwc,
                    double label_smoothing) {
  const int64_t nch = (m + kChunk - 1) / kChunk;
  with_focal_variant(focal, [&](auto fgi) {
    at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
      multiclass_bwd_range<decltype(fgi)::value, scalar_t, label_t>(
          x, lab, n, c, m, has_ignore, ignore, gs, gx, out, bad, focal, nhwc, label_smoothing,
          begin, end);
    });
  });
}

// ---- binary / multilabel: sigmoid per element -----------------------------------------------

// One sigmoid element, branch-free (the loops over these vectorize in float): e = exp(-|v|) and
// lg = log1p(e), the two transcendental parts every sigmoid term shares (the focal term takes
// them too), p = sigmoid(v), p (1 - p) = e / (1 + e)^2 without cancellation, the BCE with
// logits.
template <typename acc_t>
struct SigmoidElem {
  acc_t e, lg, p, dp, bce;
  FGL_SEG_INLINE SigmoidElem(acc_t v, acc_t t) {
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
FGL_SEG_INLINE acc_t sigmoid_focal(acc_t v, acc_t t, const SigmoidElem<acc_t>& s, acc_t gamma,
                                   acc_t alpha, acc_t* dfdx) {
  if constexpr (kHard) {
    return seg_focal<GI>(v, t, s.e, s.lg, gamma, alpha, dfdx, [](acc_t) { return acc_t(0); });
  } else {
    return seg_focal<GI>(v, t, s.e, s.lg, gamma, alpha, dfdx, [](acc_t u) { return exp_vec(u); });
  }
}

// Whether every kept target of tile [j0, j0 + len) is 0 or 1 (ignored ones enter as 0).
template <typename target_t, typename acc_t>
FGL_SEG_INLINE bool hard_tile(const target_t* tr, int64_t j0, int64_t len, bool has_ignore, acc_t ig) {
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
FGL_SEG_INLINE void sigmoid_fwd_elems(const scalar_t* __restrict__ xr, const target_t* __restrict__ tr,
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

template <typename scalar_t>
void stats_fwd(const FwdArgs& a) {
  if (a.mode == kSegMulticlass) {
    dispatch_label(a.target.scalar_type(), [&](auto tag) {
      using label_t = decltype(tag);
      multiclass_fwd<scalar_t, label_t>(a.input.data_ptr<scalar_t>(), a.target.data_ptr<label_t>(),
                                        a.n, a.c, a.m, a.has_ignore, a.ignore_index, a.part, a.nch,
                                        a.bad, a.focal, a.nhwc, a.label_smoothing);
    });
  } else {
    const at::Tensor t = a.target.scalar_type() == a.input.scalar_type()
                             ? a.target
                             : a.target.to(a.input.scalar_type());
    sigmoid_fwd<scalar_t, scalar_t>(a.input.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(),
                                    a.n * a.c, a.m, a.has_ignore, double(a.ignore_index), a.part,
                                    a.nch, a.focal, a.label_smoothing);
  }
}

template <typename scalar_t>
void stats_bwd(const BwdArgs& a) {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t* gs = a.grad_stats.data_ptr<acc_t>();
  const acc_t* gx = a.grad_xent.data_ptr<acc_t>();
  if (a.mode == kSegMulticlass) {
    dispatch_label(a.target.scalar_type(), [&](auto tag) {
      using label_t = decltype(tag);
      multiclass_bwd<scalar_t, label_t>(a.input.data_ptr<scalar_t>(), a.target.data_ptr<label_t>(),
                                        a.n, a.c, a.m, a.has_ignore, a.ignore_index, gs, gx,
                                        a.out.data_ptr<scalar_t>(), a.bad, a.focal, a.nhwc,
                                        a.label_smoothing);
    });
  } else {
    const at::Tensor t = a.target.scalar_type() == a.input.scalar_type()
                             ? a.target
                             : a.target.to(a.input.scalar_type());
    sigmoid_bwd<scalar_t, scalar_t>(a.input.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), a.n * a.c,
                                    a.m, a.has_ignore, double(a.ignore_index), gs, gx,
                                    a.out.data_ptr<scalar_t>(), a.focal, a.label_smoothing);
  }
}

}  // namespace seg_cpu
}  // namespace fastgenloss
