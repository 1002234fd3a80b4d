// The CUDA Gram kernel (see launch.h for the plan). Stage 1, gram_tile_kernel: one block of
// 4 warps per (upper-triangle tile, sample, K-range); each warp owns a 32 x 32 quarter of the
// 64 x 64 tile as 2 x 2 WMMA accumulators (float). Per K-step the block stages 64 rows x 64
// bytes of each operand in shared memory (16-byte loads, zero-filled past C and past the range),
// the next step's loads in flight in registers while the tensor cores work on this one. A
// diagonal tile reads one operand (both are the same rows) and its strictly-lower quarter is
// skipped (never read). Stage 2, gram_finish_kernel: one block per (output tile, sample) adds
// the ranges' partial tiles in range order, scales, mirrors and writes.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "style/launch.h"
#include "core/cuda_common.cuh"

namespace fastgenloss {
namespace {

using namespace nvcuda;

constexpr int kWarps = 4;
constexpr int kGramThreads = kWarps * 32;
constexpr int kRowBytes = 64;                 // bytes of a row per K-step
constexpr int kVecPerRow = kRowBytes / 16;    // 16-byte vectors per row per K-step
constexpr int kLoadsPerThread = kGramTile * kVecPerRow / kGramThreads;  // per operand: 2
constexpr int kPadBytes = 16;                 // row pitch 80 bytes: rows 16 apart stay 32-byte aligned

static_assert(kGramTile * kVecPerRow % kGramThreads == 0, "loads must divide among the threads");

// Per operand type: the WMMA shape and the shared-memory pitch (elements).
template <typename T> struct GramCfg {
  static constexpr int kK = 16;                               // WMMA K
  static constexpr int kStep = kRowBytes / int(sizeof(T));    // elements of L per K-step: 32
  static constexpr int kPitch = (kRowBytes + kPadBytes) / int(sizeof(T));  // 40
};
template <> struct GramCfg<float> {
  static constexpr int kK = 8;
  static constexpr int kStep = kRowBytes / 4;                 // 16
  static constexpr int kPitch = (kRowBytes + kPadBytes) / 4;  // 20
};

template <typename T> using Vec = Pack<T>;  // 16 bytes

// Loads 16 bytes of row `row` at K-offset `k` of one operand (zeros past C or past kend).
template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* __restrict__ f, int64_t c, int64_t l,
                                           int64_t row, int64_t k, int64_t kend, bool vec_ok) {
  Vec<T> v;
  if (row < c && vec_ok && k + Vec<T>::kN <= kend) {
    v = *reinterpret_cast<const Vec<T>*>(f + row * l + k);
  } else {
#pragma unroll
    for (int e = 0; e < Vec<T>::kN; ++e) {
      v.v[e] = (row < c && k + e < kend) ? f[row * l + k + e] : T(0.0f);
    }
  }
  return v;
}

template <typename T>
struct Stage {
  Vec<T> a[kLoadsPerThread];
  Vec<T> b[kLoadsPerThread];
};

// 16-bit operands: acc += A B^T over one K-step held in shared memory.
template <typename T, GramMath M>
struct Mma {
  using Cfg = GramCfg<T>;
  wmma::fragment<wmma::accumulator, 16, 16, Cfg::kK, float> acc[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ __forceinline__ void step(const T* as, const T* bs) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kStep; kk += Cfg::kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, Cfg::kK, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, Cfg::kK, T, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + i * 16 * Cfg::kPitch + kk, Cfg::kPitch);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + j * 16 * Cfg::kPitch + kk, Cfg::kPitch);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
};

// float32 operands on the TF32 tensor cores: rounded once (GramMath::TF32, what cuBLAS does
// where torch allows TF32), or (GramMath::F32) split into three TF32 parts hi + mid + lo
// (exact, gram_plan.h) with the six products that carry float32 accuracy, smallest first, into
// a partial of this 8-wide slice of K that is then added to the running sum with a float32
// add. The tensor cores round their accumulator toward zero; a fresh partial per slice keeps
// that rounding at the slice's magnitude instead of the running sum's (where its one-sided
// error would build up along K), and the running sum is rounded to nearest.
template <GramMath M>
struct Mma<float, M> {
  using Cfg = GramCfg<float>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  static constexpr int kParts = M == GramMath::TF32 ? 1 : 3;
  Acc acc[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  // p[0] holds the loaded float32 values: into TF32 (p[0]) or the parts hi, mid, lo (p[0..2])
  template <typename Frag>
  __device__ __forceinline__ static void split(Frag (&p)[kParts]) {
#pragma unroll
    for (int t = 0; t < p[0].num_elements; ++t) {
      const float v = p[0].x[t];
      if constexpr (kParts == 1) {
        p[0].x[t] = gram_tf32_round(v);
      } else {
        float hi, mid, lo;
        gram_tf32_split3(v, &hi, &mid, &lo);
        p[0].x[t] = hi;
        p[1].x[t] = mid;
        p[2].x[t] = lo;
      }
    }
  }

  __device__ __forceinline__ void step(const float* as, const float* bs) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kStep; kk += Cfg::kK) {
      FragA fa[2][kParts];
      FragB fb[2][kParts];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i][0], as + i * 16 * Cfg::kPitch + kk, Cfg::kPitch);
        split(fa[i]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j][0], bs + j * 16 * Cfg::kPitch + kk, Cfg::kPitch);
        split(fb[j]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if constexpr (M == GramMath::TF32) {
            wmma::mma_sync(acc[i][j], fa[i][0], fb[j][0], acc[i][j]);
          } else {
            Acc part;
            wmma::fill_fragment(part, 0.0f);
            wmma::mma_sync(part, fa[i][2], fb[j][0], part);  // lo hi
            wmma::mma_sync(part, fa[i][0], fb[j][2], part);  // hi lo
            wmma::mma_sync(part, fa[i][1], fb[j][1], part);  // mid mid
            wmma::mma_sync(part, fa[i][1], fb[j][0], part);  // mid hi
            wmma::mma_sync(part, fa[i][0], fb[j][1], part);  // hi mid
            wmma::mma_sync(part, fa[i][0], fb[j][0], part);  // hi hi
#pragma unroll
            for (int e = 0; e < part.num_elements; ++e) {
              acc[i][j].x[e] = __fadd_rn(acc[i][j].x[e], part.x[e]);
            }
          }
        }
    }
  }
};

// grid (upper tiles, N, ranges): partial tile of F F^T over one K-range, negated for the ranges
// over F_y, to scratch[((range * N + n) * tiles + t) * 64 * 64].
template <typename T, GramMath M>
__global__ void __launch_bounds__(kGramThreads)
gram_tile_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t c, int64_t l,
                 int64_t nt, int64_t splits_x, int64_t k_per_split, bool vec_ok,
                 float* __restrict__ scratch) {
  using Cfg = GramCfg<T>;
  __shared__ __align__(128) T sa[kGramTile * Cfg::kPitch];
  __shared__ __align__(128) T sb[kGramTile * Cfg::kPitch];

  const int64_t t = blockIdx.x, n = blockIdx.y, range = blockIdx.z;
  const int64_t tiles = gridDim.x, batch = gridDim.y;
  int64_t ti, tj;
  gram_tile_coords(t, nt, &ti, &tj);
  const bool diag = ti == tj;
  const bool second = range >= splits_x;  // a range over F_y
  const T* f = (second ? y : x) + n * c * l;
  const int64_t k0 = (second ? range - splits_x : range) * k_per_split;
  const int64_t kend = k0 + k_per_split < l ? k0 + k_per_split : l;
  const int64_t row_a = ti * kGramTile, row_b = tj * kGramTile;

  const int tid = threadIdx.x, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;
  // A diagonal tile's strictly-lower quarter (rows 32..63 x columns 0..31) is the mirror of
  // its upper one and is never read: that warp only loads.
  const bool skip = diag && wm > wn;

  auto fetch = [&](int64_t k, Stage<T>& s) {
#pragma unroll
    for (int q = 0; q < kLoadsPerThread; ++q) {
      const int v = tid + q * kGramThreads;
      const int r = v / kVecPerRow, col = (v % kVecPerRow) * Vec<T>::kN;
      s.a[q] = load_vec(f, c, l, row_a + r, k + col, kend, vec_ok);
      if (!diag) s.b[q] = load_vec(f, c, l, row_b + r, k + col, kend, vec_ok);
    }
  };
  auto stash = [&](const Stage<T>& s) {
#pragma unroll
    for (int q = 0; q < kLoadsPerThread; ++q) {
      const int v = tid + q * kGramThreads;
      const int r = v / kVecPerRow, col = (v % kVecPerRow) * Vec<T>::kN;
      *reinterpret_cast<Vec<T>*>(sa + r * Cfg::kPitch + col) = s.a[q];
      if (!diag) *reinterpret_cast<Vec<T>*>(sb + r * Cfg::kPitch + col) = s.b[q];
    }
  };

  Mma<T, M> mma;
  mma.zero();
  const T* as = sa + wm * 32 * Cfg::kPitch;
  const T* bs = (diag ? sa : sb) + wn * 32 * Cfg::kPitch;

  Stage<T> st;
  if (k0 < kend) {
    fetch(k0, st);
    stash(st);
  }
  __syncthreads();
  for (int64_t k = k0; k < kend; k += Cfg::kStep) {
    const bool more = k + Cfg::kStep < kend;
    if (more) fetch(k + Cfg::kStep, st);  // in flight while the tensor cores run
    if (!skip) mma.step(as, bs);
    __syncthreads();
    if (more) {
      stash(st);
      __syncthreads();
    }
  }

  if (skip) return;
  float* out = scratch + ((range * batch + n) * tiles + t) * (kGramTile * kGramTile);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (second) {
#pragma unroll
        for (int e = 0; e < mma.acc[i][j].num_elements; ++e) mma.acc[i][j].x[e] = -mma.acc[i][j].x[e];
      }
      wmma::store_matrix_sync(out + (wm * 32 + i * 16) * kGramTile + wn * 32 + j * 16, mma.acc[i][j],
                              kGramTile, wmma::mem_row_major);
    }
}

constexpr int kFinishThreadsGram = 256;

// grid (nt * nt, N): output tile (a, b) from upper tile (min, max): the ranges' partials added in
// range order, times scale; below the diagonal (and in the lower half of a diagonal tile) the
// mirror of the upper value, so G is exactly symmetric. Gram: G in T. Style: D = G - G_t in
// float, and the block's sum of D^2 in sq_part.
template <typename T, bool kStyle>
__global__ void __launch_bounds__(kFinishThreadsGram)
gram_finish_kernel(const float* __restrict__ scratch, int64_t c, int64_t nt, int64_t ranges,
                   float scale, const float* __restrict__ target, int64_t target_batch,
                   T* __restrict__ out, float* __restrict__ d, float* __restrict__ sq_part) {
  __shared__ float tile[kGramTile][kGramTile + 1];
  const int64_t ob = blockIdx.x, n = blockIdx.y, batch = gridDim.y;
  const int64_t a = ob / nt, b = ob % nt;
  const int64_t p = a < b ? a : b, q = a < b ? b : a;
  const int64_t tiles = gram_upper_tiles(nt);
  const int64_t t = gram_tile_index(p, q, nt);
  const bool diag = p == q;
  for (int e = threadIdx.x; e < kGramTile * kGramTile; e += kFinishThreadsGram) {
    const int r = e / kGramTile, col = e % kGramTile;
    float v = 0.0f;
    if (!diag || r <= col) {  // a diagonal tile's lower half was never written
      for (int64_t s = 0; s < ranges; ++s) {
        v += scratch[((s * batch + n) * tiles + t) * (kGramTile * kGramTile) + e];
      }
    }
    tile[r][col] = v;
  }
  __syncthreads();
  float sq = 0.0f;
  const float* tg = target != nullptr ? target + (target_batch > 1 ? n : 0) * c * c : nullptr;
  for (int e = threadIdx.x; e < kGramTile * kGramTile; e += kFinishThreadsGram) {
    const int r = e / kGramTile, col = e % kGramTile;
    const int64_t i = a * kGramTile + r, j = b * kGramTile + col;
    if (i >= c || j >= c) continue;
    // (i, j) with i <= j lies in tile (p, q) at (i - 64 p, j - 64 q); else take (j, i)
    const float g = i <= j ? tile[i - p * kGramTile][j - q * kGramTile]
                           : tile[j - p * kGramTile][i - q * kGramTile];
    float v = __fmul_rn(g, scale);
    if constexpr (kStyle) {
      if (tg != nullptr) v = __fsub_rn(v, tg[i * c + j]);
      d[(n * c + i) * c + j] = v;
      sq = __fadd_rn(sq, __fmul_rn(v, v));
    } else {
      out[(n * c + i) * c + j] = from_acc<T>(v);
    }
  }
  if constexpr (kStyle) {
    sq = block_sum<float, kFinishThreadsGram>(sq);
    if (threadIdx.x == 0) sq_part[n * nt * nt + ob] = sq;
  }
}

template <typename F>
cudaError_t dispatch_gram(const GramLaunch& a, F&& f) {
  switch (a.dtype) {
    case DType::Half: f(__half{}, std::integral_constant<GramMath, GramMath::Native>{}); break;
    case DType::BFloat16:
      f(__nv_bfloat16{}, std::integral_constant<GramMath, GramMath::Native>{});
      break;
    case DType::Float:
      if (a.math == GramMath::TF32) {
        f(float{}, std::integral_constant<GramMath, GramMath::TF32>{});
      } else {
        f(float{}, std::integral_constant<GramMath, GramMath::F32>{});
      }
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T, GramMath M>
void launch_tiles(const GramLaunch& a, float* scratch, cudaStream_t stream) {
  const int64_t nt = gram_tiles_per_side(a.c);
  const bool vec_ok = a.l % Vec<T>::kN == 0 && aligned16(a.x) && aligned16(a.y);
  const dim3 grid(unsigned(gram_upper_tiles(nt)), unsigned(a.n), unsigned(gram_ranges(a)));
  gram_tile_kernel<T, M><<<grid, kGramThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.y), a.c, a.l, nt, a.splits_x,
      a.k_per_split, vec_ok, scratch);
}

// Both stages: the partial tiles, then the finish (Gram in T, or style's D and sums of D^2).
template <bool kStyle>
cudaError_t launch(const GramLaunch& a, double scale, const float* target_gram,
                   int64_t target_batch, float* scratch, void* out, float* d, float* sq_part,
                   cudaStream_t stream) {
  if (a.n == 0 || a.c == 0) return cudaSuccess;
  return dispatch_gram(a, [&](auto tv, auto mv) {
    using T = decltype(tv);
    launch_tiles<T, decltype(mv)::value>(a, scratch, stream);
    const int64_t nt = gram_tiles_per_side(a.c);
    gram_finish_kernel<T, kStyle><<<dim3(unsigned(nt * nt), unsigned(a.n)), kFinishThreadsGram, 0, stream>>>(
        scratch, a.c, nt, gram_ranges(a), float(scale), target_gram, target_batch,
        static_cast<T*>(out), d, sq_part);
  });
}

}  // namespace

cudaError_t launch_gram(const GramLaunch& a, double scale, float* scratch, void* out,
                        cudaStream_t stream) {
  return launch<false>(a, scale, nullptr, 0, scratch, out, nullptr, nullptr, stream);
}

cudaError_t launch_style_diff(const GramLaunch& a, double scale, const float* target_gram,
                              int64_t target_batch, float* scratch, float* d, float* sq_part,
                              cudaStream_t stream) {
  return launch<true>(a, scale, target_gram, target_batch, scratch, nullptr, d, sq_part, stream);
}

}  // namespace fastgenloss
