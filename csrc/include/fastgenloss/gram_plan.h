// The tile and split arithmetic of the CUDA Gram kernel (gram_launch.h), with no CUDA header:
// the host plan, the kernels and the CPU tests (through fastgenloss._C._gram_plan) share it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FGL_GRAM_HD __host__ __device__ __forceinline__
#else
#define FGL_GRAM_HD inline
#endif

namespace fastgenloss {

constexpr int kGramTile = 64;  // rows and columns of G per tile

// Tiles per side and upper-triangle tiles of a C x C Gram.
FGL_GRAM_HD int64_t gram_tiles_per_side(int64_t c) { return (c + kGramTile - 1) / kGramTile; }
FGL_GRAM_HD int64_t gram_upper_tiles(int64_t nt) { return nt * (nt + 1) / 2; }

// Index of upper-triangle tile (ti, tj), ti <= tj, in row-major order of the triangle (row ti
// holds nt - ti tiles).
FGL_GRAM_HD int64_t gram_tile_index(int64_t ti, int64_t tj, int64_t nt) {
  return ti * nt - ti * (ti - 1) / 2 + (tj - ti);
}

// The inverse of gram_tile_index.
FGL_GRAM_HD void gram_tile_coords(int64_t t, int64_t nt, int64_t* ti, int64_t* tj) {
  int64_t i = 0;
  while (t >= nt - i) {
    t -= nt - i;
    ++i;
  }
  *ti = i;
  *tj = i + t;
}

// Elements of L per K-step of the kernel's shared-memory tile: 64 bytes of a row.
FGL_GRAM_HD int64_t gram_k_step(int64_t elem_bytes) { return 64 / elem_bytes; }

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

}  // namespace fastgenloss
