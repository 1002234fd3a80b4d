// The CPU segmentation kernels' vector helpers (included by cpu_multiclass.h and
// cpu_sigmoid.h): branch-free exp / log for the float loops, GCC lane vectors for the partial
// sums, the focal-variant and label-dtype dispatch.
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

#include "core/cpu_simd.h"
#include "segmentation/cpu.h"
#include "segmentation/math.h"

namespace fastgenloss {
namespace seg_cpu {
namespace {


// exp for the softmax: range reduction to r in [-ln2/2, ln2/2] (n = round(x log2 e) by the
// 1.5 * 2^23 trick, exact for |x log2 e| < 2^22), a degree-6 polynomial for e^r (Cephes'
// expf coefficients, relative error ~1e-7 = 1 ulp of float) and 2^n put into the exponent
// bits: branch-free, so the compiler vectorizes the loops that call it (std::exp is a scalar
// libm call). Inputs here are x - max <= 0; below -87 the result flushes to 0 as expf's
// underflow does (to within its denormal range).
FGL_CPU_INLINE float exp_vec(float x) {
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
FGL_CPU_INLINE double exp_vec(double x) { return std::exp(x); }

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
FGL_CPU_INLINE V load_lanes(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// |v| lane by lane: the sign bit cleared, as std::fabs
template <typename T>
FGL_CPU_INLINE typename LaneVec<T>::V abs_lanes(const typename LaneVec<T>::V& v) {
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
FGL_CPU_INLINE float log1p_unit(float e) {
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
FGL_CPU_INLINE double log1p_unit(double e) { return std::log1p(e); }

// log(s) for the softmax denominator s >= 1 (a finite float), branch-free so the loop over a
// tile's positions vectorizes (std::log is a scalar libm call per position): s = 2^n (1 + f),
// f in [0, 1) exact from the bits, log s = n ln 2 + log1p_unit(f), ln 2 in two parts so n ln 2
// adds no rounding of its own. Within 2 ulp of logf over [1, 2^24].
FGL_CPU_INLINE float log_ge1(float s) {
  int32_t bits;
  std::memcpy(&bits, &s, sizeof bits);
  const float n = float((bits >> 23) - 127);
  bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &bits, sizeof m);
  return n * 0.693145751953125f + (n * 1.42860682030941723212e-6f + log1p_unit(m - 1.0f));
}
FGL_CPU_INLINE double log_ge1(double s) { return std::log(s); }

// The one-vs-rest focal term of one multiclass element (math.h's seg_focal) with the exp /
// log1p above; GI = 2, 1 or -1 (general gamma, std::pow: scalar). The target is 0 or 1, where
// seg_focal never uses p_t = exp(-BCE) of a soft target, so that exp is not computed (a
// branch-free loop would compute it for every element).
template <int GI, typename acc_t>
FGL_CPU_INLINE acc_t focal_elem_hard(acc_t x, acc_t t, acc_t gamma, acc_t alpha, acc_t* dfdx) {
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

}  // namespace
}  // namespace seg_cpu
}  // namespace fastgenloss
