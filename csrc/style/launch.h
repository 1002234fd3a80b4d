// The hand-written CUDA Gram kernel (kernels.cu): plain C++ with raw pointers,
// so that the .cu file includes no torch headers; the tile arithmetic is HOST_DEVICE so the
// host plan and the kernels share one definition.
//
// G = s F F^T for F [N, C, L] is symmetric, so the kernel computes only the tiles (ti, tj),
// ti <= tj, of a grid of 64 x 64 tiles over G (nt (nt + 1) / 2 of nt^2, nt = ceil(C / 64)), on
// the tensor cores (mma through WMMA: float16 / bfloat16 operands, or TF32 for float32, float
// accumulation). The reduction dimension L is split into K-ranges ("splits") so that a
// long-L, small-C Gram (C = 64, L = 65536: 8 tiles for a batch of 8) still fills the GPU;
// each (split, sample, tile) writes its float partial tile to scratch, and a second kernel
// adds the splits in a fixed order (no atomics: the same bits on every run), scales, mirrors
// the upper triangle to the lower one (the result is exactly symmetric) and writes G -- or,
// for the style loss, D = s (F_x F_x^T - F_y F_y^T) - G_t (the splits over F_y negated: one
// signed product over [F_x | F_y]) with the block sums of D^2 for the loss.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

#include "style/gram_plan.h"

namespace fastgenloss {

enum class GramMath : int {
  Native = 0,  // float16 / bfloat16 operands on the tensor cores
  TF32 = 1,    // float32 rounded to TF32 (what cuBLAS does when TF32 is allowed)
  F32 = 2,     // float32 as three TF32 parts (hi + mid + lo): six products, float32 accuracy
};

struct GramLaunch {
  DType dtype;     // Float, Half or BFloat16
  GramMath math;
  int64_t n, c, l;      // features [N, C, L], contiguous
  const void* x;        // F_x
  const void* y;        // F_y (the style loss with target features), or nullptr
  int64_t splits_x;     // K-ranges over F_x (and, when y is set, as many over F_y)
  int64_t k_per_split;  // elements of L per range (a multiple of gram_k_step)
};

// Split plan: ranges of L per operand so that about `blocks_wanted` blocks run.
inline void gram_plan_splits(GramLaunch& a, int64_t blocks_wanted) {
  const GramSplits p = gram_splits(gram_k_step(a.dtype == DType::Float ? 4 : 2), a.n, a.c,
                                   a.l, a.y != nullptr ? 2 : 1, blocks_wanted);
  a.splits_x = p.splits;
  a.k_per_split = p.k_per_split;
}

// K-ranges in all: splits_x over F_x, as many over F_y when it is set.
inline int64_t gram_ranges(const GramLaunch& a) { return a.splits_x * (a.y != nullptr ? 2 : 1); }

// Float scratch the launch needs: one 64 x 64 partial tile per (range, sample, tile).
inline int64_t gram_scratch_elems(const GramLaunch& a) {
  const int64_t tiles = gram_upper_tiles(gram_tiles_per_side(a.c));
  return gram_ranges(a) * a.n * tiles * kGramTile * kGramTile;
}

// Blocks of the finishing kernel (one per output tile and sample): sq_part holds one float
// per block.
inline int64_t gram_finish_blocks(const GramLaunch& a) {
  const int64_t nt = gram_tiles_per_side(a.c);
  return a.n * nt * nt;
}

// G = scale F F^T, written as [N, C, C] in the features' dtype (out).
cudaError_t launch_gram(const GramLaunch& a, double scale, float* scratch, void* out,
                        cudaStream_t stream);

// D = scale (F_x F_x^T - F_y F_y^T) - G_t as float [N, C, C] (d), G_t a float [B, C, C]
// (B = 1: broadcast over the batch; B = N) or nullptr; sq_part[gram_finish_blocks] gets the
// per-block sums of D^2.
cudaError_t launch_style_diff(const GramLaunch& a, double scale, const float* target_gram,
                              int64_t target_batch, float* scratch, float* d, float* sq_part,
                              cudaStream_t stream);

}  // namespace fastgenloss
