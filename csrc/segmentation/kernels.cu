// CUDA kernels of the segmentation statistics (the math is math.h's, shared with
// the CPU kernel). One block handles one chunk of kChunk positions of one row: each thread
// kPer positions, kThreads apart (coalesced reads of every class row). Multiclass: the softmax
// over C per position (max, then the sum of exponentials, held in registers), then for each class
// the block's sums of (P, T, A, X[, F, K]), reduced in a fixed order and written to the chunk's
// partial; a finishing kernel adds the partials of each (sample, class) in chunk order in double.
// No float atomics anywhere: the statistics have the same bits run to run. Backward: one pass,
// the same per-position softmax, every logit's gradient written once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "segmentation/combine.h"
#include "segmentation/launch.h"
#include "segmentation/math.h"
#include "core/cuda_common.cuh"

namespace fastgenloss {
namespace {

constexpr int kPer = 8;                        // positions per thread
constexpr int64_t kChunk = int64_t(kThreads) * kPer;  // positions per block

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dlog(float v) { return logf(v); }
__device__ __forceinline__ double dlog(double v) { return log(v); }
__device__ __forceinline__ float dlog1p(float v) { return log1pf(v); }
__device__ __forceinline__ double dlog1p(double v) { return log1p(v); }

struct ExpFn {
  __device__ __forceinline__ float operator()(float v) const { return expf(v); }
  __device__ __forceinline__ double operator()(double v) const { return exp(v); }
};

// The focal term of one element with gamma's fast cases picked at run time (uniform per launch).
template <typename acc_t>
__device__ __forceinline__ acc_t focal_dev(acc_t x, acc_t t, acc_t gamma, acc_t alpha,
                                           acc_t* dfdx) {
  const acc_t e = dexp(-fabs(x));
  const acc_t l1p = dlog1p(e);
  if (gamma == acc_t(2)) return seg_focal<2>(x, t, e, l1p, gamma, alpha, dfdx, ExpFn{});
  if (gamma == acc_t(1)) return seg_focal<1>(x, t, e, l1p, gamma, alpha, dfdx, ExpFn{});
  return seg_focal<-1>(x, t, e, l1p, gamma, alpha, dfdx, ExpFn{});
}

// Block sums of kW values at once (fixed order), valid in thread 0; two barriers per call.
template <typename acc_t, int kW>
__device__ __forceinline__ void block_sums(acc_t (&v)[kW]) {
  __shared__ acc_t part[kThreads / 32][kW];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < kW; ++q) v[q] = warp_sum(v[q]);
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < kW; ++q) part[warp][q] = v[q];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int q = 0; q < kW; ++q) {
      acc_t s = lane < kThreads / 32 ? part[lane][q] : acc_t(0);
      v[q] = warp_sum(s);
    }
  }
  __syncthreads();
}

// One element's share of the statistics: P, T, A, the cross-entropy X[, focal F, kept K].
template <bool kFocal, typename acc_t, int W>
__device__ __forceinline__ void add_stats(acc_t (&v)[W], acc_t p, acc_t t, acc_t ce, acc_t xv,
                                          acc_t gamma, acc_t alpha) {
  v[0] += p;
  v[1] += t;
  v[2] += fabs(p - t);
  v[3] += ce;
  if constexpr (kFocal) {
    acc_t unused;
    v[4] += focal_dev(xv, t, gamma, alpha, &unused);
    v[5] += acc_t(1);
  }
}

// The block's sums of v, written by thread 0 to dst[0, W).
template <typename acc_t, int W>
__device__ __forceinline__ void store_block_sums(acc_t (&v)[W], acc_t* dst) {
  block_sums<acc_t, W>(v);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int q = 0; q < W; ++q) dst[q] = v[q];
  }
}

__device__ __forceinline__ void report_bad(unsigned long long* bad, int64_t value) {
  if (atomicCAS(bad, 0ull, 1ull) == 0ull) bad[1] = static_cast<unsigned long long>(value);
}

// ---- multiclass -------------------------------------------------------------------------------

// Per-thread softmax state of its kPer positions.
template <typename T, typename L, typename acc_t>
struct McState {
  int64_t pos[kPer];
  int lbl[kPer];  // the label where the position counts, else -1
  acc_t mx[kPer], inv[kPer], lse[kPer];

  __device__ __forceinline__ void load(const T* xb, const L* lb, int64_t c, int64_t m,
                                       int64_t ch, bool has_ignore, int64_t ignore,
                                       unsigned long long* bad) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t j = ch * kChunk + int64_t(i) * kThreads + threadIdx.x;
      pos[i] = j < m ? j : -1;
      lbl[i] = -1;
      mx[i] = acc_t(0);
      inv[i] = acc_t(0);
      lse[i] = acc_t(0);
      if (j >= m) continue;
      const int64_t l = static_cast<int64_t>(lb[j]);
      const bool ign = has_ignore && l == ignore;
      if (!ign && (l < 0 || l >= c)) {
        if (bad != nullptr) report_bad(bad, l);
      } else if (!ign) {
        lbl[i] = int(l);
      }
      acc_t mv = -INFINITY;
      for (int64_t k = 0; k < c; ++k) mv = fmax(mv, to_acc(xb[k * m + j]));
      acc_t s = 0;
      for (int64_t k = 0; k < c; ++k) s += dexp(to_acc(xb[k * m + j]) - mv);
      mx[i] = mv;
      inv[i] = acc_t(1) / s;
      lse[i] = mv + dlog(s);
    }
  }
};

template <typename T, typename L, bool kFocal>
__global__ void __launch_bounds__(kThreads)
seg_mc_fwd_kernel(const T* __restrict__ x, const L* __restrict__ lab, int64_t c, int64_t m,
                  int64_t nch, bool has_ignore, int64_t ignore, acc_type_t<T> gamma, acc_type_t<T> alpha,
                  acc_type_t<T>* __restrict__ part, unsigned long long* bad) {
  using acc_t = acc_type_t<T>;
  constexpr int W = kFocal ? 6 : 4;
  const int64_t b = blockIdx.x / nch, ch = blockIdx.x % nch;
  const T* xb = x + b * c * m;
  McState<T, L, acc_t> st;
  st.load(xb, lab + b * m, c, m, ch, has_ignore, ignore, bad);
  acc_t* out = part + (b * nch + ch) * c * W;
  for (int64_t k = 0; k < c; ++k) {
    acc_t v[W];
#pragma unroll
    for (int q = 0; q < W; ++q) v[q] = acc_t(0);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (st.lbl[i] < 0) continue;  // beyond the row, ignored or invalid: counts nowhere
      const acc_t xv = to_acc(xb[k * m + st.pos[i]]);
      const acc_t p = dexp(xv - st.mx[i]) * st.inv[i];
      const bool hit = st.lbl[i] == int(k);
      // the cross-entropy, -log softmax at the label, is credited to the label's class
      add_stats<kFocal>(v, p, hit ? acc_t(1) : acc_t(0), hit ? st.lse[i] - xv : acc_t(0), xv,
                        gamma, alpha);
    }
    store_block_sums(v, out + k * W);
  }
}

template <typename T, typename L, bool kFocal>
__global__ void __launch_bounds__(kThreads)
seg_mc_bwd_kernel(const T* __restrict__ x, const L* __restrict__ lab, int64_t c, int64_t m,
                  int64_t nch, bool has_ignore, int64_t ignore, acc_type_t<T> gamma, acc_type_t<T> alpha,
                  const acc_type_t<T>* __restrict__ gs, const acc_type_t<T>* __restrict__ gx,
                  T* __restrict__ out) {
  using acc_t = acc_type_t<T>;
  constexpr int S = kFocal ? 5 : 3;
  const int64_t b = blockIdx.x / nch, ch = blockIdx.x % nch;
  const T* xb = x + b * c * m;
  T* ob = out + b * c * m;
  const acc_t* gsb = gs + b * c * S;
  McState<T, L, acc_t> st;
  st.load(xb, lab + b * m, c, m, ch, has_ignore, ignore, nullptr);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t j = st.pos[i];
    if (j < 0) continue;
    const int l = st.lbl[i];
    if (l < 0) {  // ignored (or invalid, already reported by the forward): zero gradient
      for (int64_t k = 0; k < c; ++k) ob[k * m + j] = from_acc<T>(acc_t(0));
      continue;
    }
    // dot = sum_k p_k v_k, v_k = dL/dP_k + dL/dA_k sign(p_k - t_k)
    acc_t dot = 0;
    for (int64_t k = 0; k < c; ++k) {
      const acc_t p = dexp(to_acc(xb[k * m + j]) - st.mx[i]) * st.inv[i];
      const acc_t tv = l == int(k) ? acc_t(1) : acc_t(0);
      dot += p * (gsb[k * S + 0] + gsb[k * S + 2] * seg_sign(p - tv));
    }
    const acc_t gce = gx[b * c + l];
    for (int64_t k = 0; k < c; ++k) {
      const acc_t xv = to_acc(xb[k * m + j]);
      const acc_t p = dexp(xv - st.mx[i]) * st.inv[i];
      const acc_t tv = l == int(k) ? acc_t(1) : acc_t(0);
      const acc_t vk = gsb[k * S + 0] + gsb[k * S + 2] * seg_sign(p - tv);
      acc_t d = p * (vk - dot) + gce * (p - tv);
      if constexpr (kFocal) {
        acc_t dfdx;
        focal_dev(xv, tv, gamma, alpha, &dfdx);
        d += gsb[k * S + 3] * dfdx;
      }
      ob[k * m + j] = from_acc<T>(d);
    }
  }
}

// ---- binary / multilabel: a sigmoid per element -------------------------------------------------

template <typename T, bool kFocal>
__global__ void __launch_bounds__(kThreads)
seg_sig_fwd_kernel(const T* __restrict__ x, const T* __restrict__ tg, int64_t m, int64_t nch,
                   bool has_ignore, acc_type_t<T> ig, acc_type_t<T> gamma, acc_type_t<T> alpha,
                   acc_type_t<T>* __restrict__ part) {
  using acc_t = acc_type_t<T>;
  constexpr int W = kFocal ? 6 : 4;
  const int64_t r = blockIdx.x / nch, ch = blockIdx.x % nch;
  const T* xr = x + r * m;
  const T* tr = tg + r * m;
  acc_t v[W];
#pragma unroll
  for (int q = 0; q < W; ++q) v[q] = acc_t(0);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t j = ch * kChunk + int64_t(i) * kThreads + threadIdx.x;
    if (j >= m) continue;
    const acc_t t = to_acc(tr[j]);
    if (has_ignore && t == ig) continue;
    const acc_t xv = to_acc(xr[j]);
    add_stats<kFocal>(v, seg_sigmoid(xv), t, seg_bce_with_logits(xv, t), xv, gamma, alpha);
  }
  store_block_sums(v, part + blockIdx.x * W);
}

template <typename T, bool kFocal>
__global__ void __launch_bounds__(kThreads)
seg_sig_bwd_kernel(const T* __restrict__ x, const T* __restrict__ tg, int64_t rows, int64_t m,
                   bool has_ignore, acc_type_t<T> ig, acc_type_t<T> gamma, acc_type_t<T> alpha,
                   const acc_type_t<T>* __restrict__ gs, const acc_type_t<T>* __restrict__ gx,
                   T* __restrict__ out) {
  using acc_t = acc_type_t<T>;
  constexpr int S = kFocal ? 5 : 3;
  const int64_t total = rows * m;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t r = i / m;
    const acc_t t = to_acc(tg[i]);
    if (has_ignore && t == ig) {
      out[i] = from_acc<T>(acc_t(0));
      continue;
    }
    const acc_t xv = to_acc(x[i]);
    const acc_t p = seg_sigmoid(xv);
    acc_t d = seg_sigmoid_grad(p, t, gs[r * S + 0], gs[r * S + 2], gx[r]);
    if constexpr (kFocal) {
      acc_t dfdx;
      focal_dev(xv, t, gamma, alpha, &dfdx);
      d += gs[r * S + 3] * dfdx;
    }
    out[i] = from_acc<T>(d);
  }
}

// ---- the finishing sums -------------------------------------------------------------------------

// One thread per (sample, class): its chunk partials added in chunk order, in double.
template <typename acc_t, int W>
__global__ void __launch_bounds__(kThreads)
seg_finish_kernel(const acc_t* __restrict__ part, int64_t n, int64_t c, int64_t nch,
                  bool multiclass, acc_t* __restrict__ stats, acc_t* __restrict__ xent) {
  constexpr int S = W == 6 ? 5 : 3;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= n * c) return;
  const int64_t b = e / c, k = e % c;
  double s[W];
#pragma unroll
  for (int q = 0; q < W; ++q) s[q] = 0.0;
  for (int64_t ch = 0; ch < nch; ++ch) {
    const acc_t* a = multiclass ? part + ((b * nch + ch) * c + k) * W : part + (e * nch + ch) * W;
#pragma unroll
    for (int q = 0; q < W; ++q) s[q] += double(a[q]);
  }
  acc_t* o = stats + e * S;
  o[0] = acc_t(s[0]);
  o[1] = acc_t(s[1]);
  o[2] = acc_t(s[2]);
  if constexpr (W == 6) {
    o[3] = acc_t(s[4]);
    o[4] = acc_t(s[5]);
  }
  xent[e] = acc_t(s[3]);
}

template <typename F>
cudaError_t dispatch_labels(SegLabel l, F&& f) {
  switch (l) {
    case SegLabel::UInt8: f(uint8_t{}); break;
    case SegLabel::Int32: f(int32_t{}); break;
    case SegLabel::Int64: f(int64_t{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename F>
void dispatch_focal(bool on, F&& f) {
  if (on) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// The second stage (combine.h) in one block: each thread sums its classes' shares of the
// totals, the block adds them in a fixed order, then (backward) each thread writes its classes'
// gradients. grad == nullptr: forward, the loss to *out; else backward with dL = *grad.
constexpr int kCombineThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
seg_combine_kernel(SegCombine q, const T* __restrict__ stats, const T* __restrict__ xent,
                   const T* __restrict__ weights, const T* __restrict__ grad, T* __restrict__ out, T* __restrict__ gstats,
                   T* __restrict__ gxent) {
  __shared__ double tot_all[kSegTotals];
  double tot[kSegTotals];
#pragma unroll
  for (int i = 0; i < kSegTotals; ++i) tot[i] = 0.0;
  for (int64_t c = threadIdx.x; c < q.c; c += kCombineThreads) {
    seg_combine_class(q, stats, xent, weights, c, tot);
  }
#pragma unroll
  for (int i = 0; i < kSegTotals; ++i) {
    const double v = block_sum<double, kCombineThreads>(tot[i]);
    if (threadIdx.x == 0) tot_all[i] = v;
  }
  __syncthreads();
  if (grad == nullptr) {
    if (threadIdx.x == 0) *out = static_cast<T>(seg_combine_total(q, tot_all));
    return;
  }
  const double g = static_cast<double>(*grad);
  for (int64_t c = threadIdx.x; c < q.c; c += kCombineThreads) {
    seg_combine_class_grad(q, stats, weights, tot_all, g, c, gstats, gxent);
  }
}

}  // namespace

int64_t seg_chunks(int64_t m) { return m > 0 ? (m + kChunk - 1) / kChunk : 1; }

cudaError_t launch_seg_fwd(const SegLaunch& a, void* part, void* stats, void* xent, void* bad,
                           cudaStream_t stream) {
  const bool focal = a.focal_gamma >= 0.0;
  const bool mc = a.mode == kSegMulticlass;
  const int64_t nch = seg_chunks(a.m);
  const int64_t rows = mc ? a.n : a.n * a.c;
  cudaError_t err = cudaSuccess;
  cudaError_t derr = dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const acc_t g = acc_t(a.focal_gamma), al = acc_t(a.focal_alpha);
    dispatch_focal(focal, [&](auto F) {
      constexpr bool kF = decltype(F)::value;
      if (rows > 0 && a.m > 0 && a.c > 0) {
        if (mc) {
          err = dispatch_labels(a.labels, [&](auto ltag) {
            using L = decltype(ltag);
            seg_mc_fwd_kernel<T, L, kF><<<unsigned(rows * nch), kThreads, 0, stream>>>(
                static_cast<const T*>(a.input), static_cast<const L*>(a.target), a.c, a.m, nch,
                a.has_ignore, a.ignore_index, g, al, static_cast<acc_t*>(part),
                static_cast<unsigned long long*>(bad));
          });
        } else {
          seg_sig_fwd_kernel<T, kF><<<unsigned(rows * nch), kThreads, 0, stream>>>(
              static_cast<const T*>(a.input), static_cast<const T*>(a.target), a.m, nch,
              a.has_ignore, acc_t(double(a.ignore_index)), g, al, static_cast<acc_t*>(part));
        }
      }
      const int64_t e = a.n * a.c;
      if (e > 0) {
        const int64_t nch_eff = (a.m > 0) ? nch : 0;  // nothing to add over an empty row
        seg_finish_kernel<acc_t, kF ? 6 : 4><<<unsigned((e + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
            static_cast<const acc_t*>(part), a.n, a.c, nch_eff, mc, static_cast<acc_t*>(stats),
            static_cast<acc_t*>(xent));
      }
    });
  });
  return err != cudaSuccess ? err : derr;
}

cudaError_t launch_seg_bwd(const SegLaunch& a, const void* grad_stats, const void* grad_xent,
                           void* grad, cudaStream_t stream) {
  if (a.n == 0 || a.c == 0 || a.m == 0) return cudaSuccess;
  const bool focal = a.focal_gamma >= 0.0;
  const bool mc = a.mode == kSegMulticlass;
  cudaError_t err = cudaSuccess;
  cudaError_t derr = dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const acc_t g = acc_t(a.focal_gamma), al = acc_t(a.focal_alpha);
    dispatch_focal(focal, [&](auto F) {
      constexpr bool kF = decltype(F)::value;
      if (mc) {
        const int64_t nch = seg_chunks(a.m);
        err = dispatch_labels(a.labels, [&](auto ltag) {
          using L = decltype(ltag);
          seg_mc_bwd_kernel<T, L, kF><<<unsigned(a.n * nch), kThreads, 0, stream>>>(
              static_cast<const T*>(a.input), static_cast<const L*>(a.target), a.c, a.m, nch,
              a.has_ignore, a.ignore_index, g, al, static_cast<const acc_t*>(grad_stats),
              static_cast<const acc_t*>(grad_xent), static_cast<T*>(grad));
        });
      } else {
        const int64_t rows = a.n * a.c, total = rows * a.m;
        int64_t blocks = (total + kThreads - 1) / kThreads;
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
        const int64_t cap = int64_t(sm_count(dev)) * blocks_per_sm() * 8;
        if (blocks > cap) blocks = cap;
        seg_sig_bwd_kernel<T, kF><<<unsigned(blocks), kThreads, 0, stream>>>(
            static_cast<const T*>(a.input), static_cast<const T*>(a.target), rows, a.m,
            a.has_ignore, acc_t(double(a.ignore_index)), g, al,
            static_cast<const acc_t*>(grad_stats), static_cast<const acc_t*>(grad_xent),
            static_cast<T*>(grad));
      }
    });
  });
  return err != cudaSuccess ? err : derr;
}

cudaError_t launch_seg_combine(const SegCombine& q, DType dtype, const void* stats,
                               const void* xent, const void* weights, const void* grad, void* out, void* gstats,
                               void* gxent, cudaStream_t stream) {
  if (grad != nullptr && q.n * q.c == 0) return cudaSuccess;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    seg_combine_kernel<T><<<1, kCombineThreads, 0, stream>>>(
        q, static_cast<const T*>(stats), static_cast<const T*>(xent),
        static_cast<const T*>(weights), static_cast<const T*>(grad),
        static_cast<T*>(out), static_cast<T*>(gstats), static_cast<T*>(gxent));
  };
  switch (dtype) {  // the statistics' dtypes only
    case DType::Float: run(float{}); break;
    case DType::Double: run(double{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace fastgenloss
