// CUDA kernels of the fused pixel losses.
//
// Reducing forward: one grid-stride pass with 16-byte vector loads reads input, target (and
// weight) once and, when asked, writes the input gradient: per element 2-3 reads + 0-1 write,
// ~10 flops, so it is bound by memory bandwidth -- provided the element math holds only the
// terms asked for: every kernel is compiled for the term families present (TermSet: the square
// root of charbonnier, the selects and divisions of huber / smooth-l1), since an IEEE square root
// and division per element (--fmad=false, no fast math) would make a bfloat16 pass compute-bound
// (mse took as long in bfloat16 as in float32 with all terms compiled in). Each block writes
// its partial sums; a second
// one-block kernel adds them in a fixed order (no float atomics: same bits every run) and
// divides by the reduction's denominator. Indices are int64 throughout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "pixel/launch.h"
#include "pixel/math.h"
#include "core/cuda_common.cuh"

namespace fastgenloss {
namespace {

// The weight of input position i: w[i] when laid out like the input, else through the index of
// a broadcast weight (read in place, never copied to the input's size).
struct WeightRef {
  bool indexed;
  WeightIndex index;
  __device__ __forceinline__ int64_t at(int64_t i) const { return indexed ? weight_offset(index, i) : i; }
};

// The term families a kernel is compiled for (see pixel_terms_used): kSqrt for charbonnier,
// kPiece kPieceNone or kPieceBoth (huber and smooth-l1 share one instantiation; a zero
// coefficient still contributes exactly nothing).
template <bool kSqrt, int kPiece>
struct TermSet {
  static constexpr bool sqrt = kSqrt;
  static constexpr int piece = kPiece;
};

template <typename acc_t, typename F>
void dispatch_terms(const PixelCoeffs<acc_t>& c, F&& f) {
  const PixelTermsUsed u = pixel_terms_used(c);
  const bool pw = u.piecewise != kPieceNone;
  if (u.sqrt_term) {
    if (pw) f(TermSet<true, kPieceBoth>{});
    else f(TermSet<true, kPieceNone>{});
  } else {
    if (pw) f(TermSet<false, kPieceBoth>{});
    else f(TermSet<false, kPieceNone>{});
  }
}

// One element of the reducing forward: adds w*l to acc (and w to wacc when weighted) and returns
// grad_scale*w*dl/dd, the gradient the forward writes (0 when none is wanted).
template <typename TS, typename acc_t>
__device__ __forceinline__ acc_t fwd_element(const PixelCoeffs<acc_t>& c, acc_t d, bool weighted,
                                             acc_t wi, bool want_grad, acc_t grad_scale,
                                             acc_t& acc, acc_t& wacc) {
  acc_t v = pixel_value<TS::sqrt, TS::piece>(c, d);
  if (weighted) {
    v *= wi;
    wacc += wi;
  }
  acc += v;
  return want_grad ? grad_scale * wi * pixel_deriv<TS::sqrt, TS::piece>(c, d) : acc_t(0);
}

template <typename T, typename TS>
__global__ void __launch_bounds__(kThreads)
pixel_fwd_partial_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                         WeightRef wr, T* __restrict__ grad, int64_t n, PixelCoeffs<acc_type_t<T>> c,
                         acc_type_t<T> grad_scale, bool vectorized, acc_type_t<T>* __restrict__ partial) {
  using acc_t = acc_type_t<T>;
  acc_t acc = acc_t(0), wacc = acc_t(0);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  int64_t tail_start = 0;
  if (vectorized) {
    constexpr int kN = Pack<T>::kN;
    const int64_t npack = n / kN;
    for (int64_t p = int64_t(blockIdx.x) * kThreads + threadIdx.x; p < npack; p += stride) {
      const Pack<T> xv = reinterpret_cast<const Pack<T>*>(x)[p];
      const Pack<T> yv = reinterpret_cast<const Pack<T>*>(y)[p];
      Pack<T> wv, gv;
      if (w != nullptr && !wr.indexed) wv = reinterpret_cast<const Pack<T>*>(w)[p];
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const acc_t wj = w == nullptr ? acc_t(1)
                         : (wr.indexed ? to_acc(w[wr.at(p * kN + j)]) : to_acc(wv.v[j]));
        const acc_t gj = fwd_element<TS>(c, to_acc(xv.v[j]) - to_acc(yv.v[j]), w != nullptr, wj,
                                     grad != nullptr, grad_scale, acc, wacc);
        if (grad != nullptr) gv.v[j] = from_acc<T>(gj);
      }
      if (grad != nullptr) reinterpret_cast<Pack<T>*>(grad)[p] = gv;
    }
    tail_start = npack * kN;
  }
  for (int64_t i = tail_start + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const acc_t wi = w == nullptr ? acc_t(1) : to_acc(w[wr.at(i)]);
    const acc_t gi = fwd_element<TS>(c, to_acc(x[i]) - to_acc(y[i]), w != nullptr, wi,
                                 grad != nullptr, grad_scale, acc, wacc);
    if (grad != nullptr) grad[i] = from_acc<T>(gi);
  }
  acc = block_sum<acc_t, kThreads>(acc);
  wacc = block_sum<acc_t, kThreads>(wacc);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = acc;
    partial[2 * blockIdx.x + 1] = wacc;
  }
}

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
pixel_fwd_finish_kernel(const acc_type_t<T>* __restrict__ partial, int nparts, int64_t n,
                        int64_t reduction, T* __restrict__ loss, acc_type_t<T>* __restrict__ wsum) {
  using acc_t = acc_type_t<T>;
  acc_t s = acc_t(0), ws = acc_t(0);
  for (int i = threadIdx.x; i < nparts; i += kFinishThreads) {
    s += partial[2 * i];
    ws += partial[2 * i + 1];
  }
  s = block_sum<acc_t, kFinishThreads>(s);
  ws = block_sum<acc_t, kFinishThreads>(ws);
  if (threadIdx.x == 0) {
    loss[0] = from_acc<T>(pixel_reduce_finish<acc_t>(reduction, s, ws, n));
    if (wsum != nullptr) wsum[0] = ws;
  }
}

template <typename T, typename TS>
__global__ void pixel_fwd_none_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                      const T* __restrict__ w, WeightRef wr,
                                      T* __restrict__ out, int64_t n,
                                      PixelCoeffs<acc_type_t<T>> c) {
  using acc_t = acc_type_t<T>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc_t v = pixel_value<TS::sqrt, TS::piece>(c, to_acc(x[i]) - to_acc(y[i]));
    if (w != nullptr) v *= to_acc(w[wr.at(i)]);
    out[i] = from_acc<T>(v);
  }
}

template <typename T, typename TS>
__global__ void pixel_bwd_kernel(const T* __restrict__ go, bool elementwise_go,
                                 const T* __restrict__ x, const T* __restrict__ y,
                                 const T* __restrict__ w, WeightRef wr,
                                 const T* __restrict__ loss,
                                 const acc_type_t<T>* __restrict__ wsum, T* __restrict__ gi,
                                 T* __restrict__ gw, int64_t n, int64_t reduction,
                                 PixelCoeffs<acc_type_t<T>> c) {
  using acc_t = acc_type_t<T>;
  const acc_t ws = wsum != nullptr ? wsum[0] : acc_t(0);
  const acc_t go0 = elementwise_go ? acc_t(0) : to_acc(go[0]);
  const acc_t pre = pixel_grad_pre_scale<acc_t>(reduction, n);
  const acc_t post = elementwise_go ? acc_t(0) : pixel_grad_post_scale<acc_t>(reduction, go0, ws);
  const acc_t wscale = elementwise_go ? acc_t(0) : pixel_reduce_scale<acc_t>(reduction, go0, ws, n);
  const acc_t loss_v = (loss != nullptr && gw != nullptr) ? to_acc(loss[0]) : acc_t(0);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t d = to_acc(x[i]) - to_acc(y[i]);
    const acc_t wi = w != nullptr ? to_acc(w[wr.at(i)]) : acc_t(1);
    if (gi != nullptr) {
      if (elementwise_go) {
        gi[i] = from_acc<T>(to_acc(go[i]) * wi * pixel_deriv<TS::sqrt, TS::piece>(c, d));
      } else if (reduction == kReduceNone) {  // broadcast grad_output: one rounding, as torch
        gi[i] = from_acc<T>(post * wi * pixel_deriv<TS::sqrt, TS::piece>(c, d));
      } else {  // two roundings, as the forward-written gradient scaled in backward
        gi[i] = from_acc<T>(to_acc(from_acc<T>(pre * wi * pixel_deriv<TS::sqrt, TS::piece>(c, d))) * post);
      }
    }
    if (gw != nullptr) {
      const acc_t s = elementwise_go ? to_acc(go[i]) : wscale;
      gw[i] = from_acc<T>(pixel_weight_grad<acc_t>(reduction, s, pixel_value<TS::sqrt, TS::piece>(c, d), loss_v));
    }
  }
}

WeightRef weight_ref(const PixelLaunch& a) { return WeightRef{a.weight_indexed, a.weight_index}; }

int elementwise_grid(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return int(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);  // grid-stride covers the rest
}

template <typename acc_t>
PixelCoeffs<acc_t> coeffs_of(const PixelLaunch& a) {
  return fold_smooth_l1(PixelCoeffs<acc_t>{acc_t(a.l1), acc_t(a.mse), acc_t(a.charbonnier),
                                           acc_t(a.huber), acc_t(a.smooth_l1), acc_t(a.eps * a.eps),
                                           acc_t(a.delta), acc_t(a.beta)});
}

}  // namespace

int pixel_reduce_grid(int64_t n, int device) {
  const int sms = sm_count(device);
  const int64_t want = (n + int64_t(kThreads) * 8 - 1) / (int64_t(kThreads) * 8);
  const int64_t cap = int64_t(sms) * blocks_per_sm();
  return int(want < 1 ? 1 : (want < cap ? want : cap));
}

cudaError_t launch_pixel_fwd_reduce(const PixelLaunch& a, void* loss, void* wsum, void* grad,
                                  void* scratch, int grid, cudaStream_t stream) {
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const acc_t grad_scale = pixel_grad_pre_scale<acc_t>(a.reduction, a.n > 0 ? a.n : 1);
    const bool vec = aligned16(a.input) && aligned16(a.target) &&
                     (a.weight_indexed || aligned16(a.weight)) && aligned16(grad);
    const PixelCoeffs<acc_t> c = coeffs_of<acc_t>(a);
    if (a.n > 0) {
      dispatch_terms(c, [&](auto ts) {
        pixel_fwd_partial_kernel<T, decltype(ts)><<<grid, kThreads, 0, stream>>>(
            static_cast<const T*>(a.input), static_cast<const T*>(a.target),
            static_cast<const T*>(a.weight), weight_ref(a), static_cast<T*>(grad), a.n, c,
            grad_scale, vec, static_cast<acc_t*>(scratch));
      });
    }
    pixel_fwd_finish_kernel<T><<<1, kFinishThreads, 0, stream>>>(
        static_cast<const acc_t*>(scratch), a.n > 0 ? grid : 0, a.n, a.reduction,
        static_cast<T*>(loss), static_cast<acc_t*>(wsum));
  });
}

cudaError_t launch_pixel_fwd_none(const PixelLaunch& a, void* out, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const PixelCoeffs<acc_type_t<T>> c = coeffs_of<acc_type_t<T>>(a);
    dispatch_terms(c, [&](auto ts) {
      pixel_fwd_none_kernel<T, decltype(ts)><<<elementwise_grid(a.n), kThreads, 0, stream>>>(
          static_cast<const T*>(a.input), static_cast<const T*>(a.target),
          static_cast<const T*>(a.weight), weight_ref(a), static_cast<T*>(out), a.n, c);
    });
  });
}

cudaError_t launch_pixel_bwd(const PixelLaunch& a, const void* grad_output, bool go_scalar,
                             const void* loss,
                           const void* wsum, void* grad_input, void* grad_weight,
                           cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const PixelCoeffs<acc_t> c = coeffs_of<acc_t>(a);
    dispatch_terms(c, [&](auto ts) {
      pixel_bwd_kernel<T, decltype(ts)><<<elementwise_grid(a.n), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_output), a.reduction == kReduceNone && !go_scalar,
          static_cast<const T*>(a.input), static_cast<const T*>(a.target),
          static_cast<const T*>(a.weight), weight_ref(a), static_cast<const T*>(loss),
          static_cast<const acc_t*>(wsum), static_cast<T*>(grad_input),
          static_cast<T*>(grad_weight), a.n, a.reduction, c);
    });
  });
}

}  // namespace fastgenloss
