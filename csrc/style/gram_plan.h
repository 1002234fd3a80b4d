// The tile and split arithmetic of the CUDA Gram kernel (launch.h), with no CUDA header:
// the host plan, the kernels and the CPU tests (through fastgenloss._C._testing: testing.cpp) share it.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace fastgenloss {

constexpr int kGramTile = 64;  // rows and columns of G per tile

// Tiles per side and upper-triangle tiles of a C x C Gram.
FGL_HOST_DEVICE int64_t gram_tiles_per_side(int64_t c) { return (c + kGramTile - 1) / kGramTile; }
FGL_HOST_DEVICE int64_t gram_upper_tiles(int64_t nt) { return nt * (nt + 1) / 2; }

// Index of upper-triangle tile (ti, tj), ti <= tj, in row-major order of the triangle (row ti
// holds nt - ti tiles).
FGL_HOST_DEVICE int64_t gram_tile_index(int64_t ti, int64_t tj, int64_t nt) {
  return ti * nt - ti * (ti - 1) / 2 + (tj - ti);
}

// The inverse of gram_tile_index.
FGL_HOST_DEVICE void gram_tile_coords(int64_t t, int64_t nt, int64_t* ti, int64_t* tj) {
  int64_t i = 0;
  while (t >= nt - i) {
    t -= nt - i;
    ++i;
  }
  *ti = i;
  *tj = i + t;
}

// Elements of L per K-step of the kernel's shared-memory tile: 64 bytes of a row.
FGL_HOST_DEVICE int64_t gram_k_step(int64_t elem_bytes) { return 64 / elem_bytes; }

struct GramSplits {
  int64_t splits;       // K-ranges per operand
  int64_t k_per_split;  // elements of L per range, a multiple of the K-step
};

// Ranges of L per operand so that about `blocks_wanted` blocks (one per upper tile, sample,
// range) run, each range at least 4 K-steps; every range non-empty, together exactly [0, L).
inline GramSplits gram_splits(int64_t k_step, int64_t n, int64_t c, int64_t l, int64_t operands,
                              int64_t blocks_wanted) {
  const int64_t ksteps = l > 0 ? (l + k_step - 1) / k_step : 1;
  const int64_t have = n * gram_upper_tiles(gram_tiles_per_side(c)) * operands;
  int64_t s = have >= blocks_wanted || have <= 0 ? 1 : (blocks_wanted + have - 1) / have;
  const int64_t most = ksteps / 4 > 1 ? ksteps / 4 : 1;
  if (s > most) s = most;
  if (s > 4096) s = 4096;
  const int64_t per = (ksteps + s - 1) / s;
  return GramSplits{(ksteps + per - 1) / per, per * k_step};
}

// ---- float32 operands on the TF32 tensor cores ----------------------------------------------
// A TF32 operand is a float32 whose low 13 mantissa bits are zero (the tensor cores ignore
// them): 1 + 10 significant bits. A float32 (1 + 23 bits) is exactly the sum of three such
// parts, hi + mid + lo, and a product a b is then, to within 2^-32 of |a b|, the sum of the six
// products lo_a hi_b + hi_a lo_b + mid_a mid_b + mid_a hi_b + hi_a mid_b + hi_a hi_b (the three
// dropped ones, mid lo, lo mid and lo lo, are each below 2^-32 |a b|). Two parts (hi + small,
// three products: "3xTF32") leave ~2^-22 per product, four times float32's rounding: too coarse
// for the float32 style-loss tests.

FGL_HOST_DEVICE uint32_t gram_f32_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}

FGL_HOST_DEVICE float gram_f32_from_bits(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}

// v rounded to TF32, to nearest with ties away from zero (PTX cvt.rna.tf32.f32); infinities
// stay, a NaN stays a NaN.
FGL_HOST_DEVICE float gram_tf32_round(float v) {
  const uint32_t b = gram_f32_bits(v);
  const uint32_t rounded = (b + 0x1000u) & 0xffffe000u;
  const uint32_t special = (b & 0x007fffffu) != 0 ? 0x7fffe000u : b;  // NaN : +-inf
  return gram_f32_from_bits((b & 0x7f800000u) == 0x7f800000u ? special : rounded);
}

// v = hi + mid + lo, each part TF32: exactly for finite |v| >= 2^-113 (the residuals are exact
// float32 subtractions: v - hi has at most 13 significant bits, v - hi - mid at most 2), to
// within 2^-137 below (TF32's subnormals are multiples of 2^-136). A non-finite v, or one that
// rounds past the largest float32, gives hi = +-inf (or NaN) and zero mid and lo.
FGL_HOST_DEVICE void gram_tf32_split3(float v, float* hi, float* mid, float* lo) {
  const float h = gram_tf32_round(v);
  if ((gram_f32_bits(h) & 0x7f800000u) == 0x7f800000u) {
    *hi = h;
    *mid = 0.0f;
    *lo = 0.0f;
    return;
  }
  const float r = v - h;
  const float m = gram_tf32_round(r);
  *hi = h;
  *mid = m;
  *lo = gram_tf32_round(r - m);
}

}  // namespace fastgenloss
