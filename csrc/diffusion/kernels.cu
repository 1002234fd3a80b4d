// CUDA kernels of the diffusion losses and noising ops.
//
// Tensors are [N, M] in memory (sample-major; any layout of the non-batch dims). Block b of a
// 1-D grid of N * bps blocks works on sample b / bps, chunk b % bps, so each block computes its
// sample's coefficients once (a few double ops per thread, from the timestep or sigma read on
// the device: no host synchronization) and then streams its chunk with 16-byte loads.
// Loss forward: per element 2-3 reads and 0-1 write; block partial sums go to scratch and one
// small kernel adds them per sample in a fixed order (same bits every run), applies the
// weights and the batch reduction.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "diffusion/launch.h"
#include "diffusion/math.h"
#include "core/cuda_common.cuh"

namespace fastgenloss {
namespace {

// Reads W consecutive elements starting at p (W = 1, or one 16-byte pack).
template <int W, typename T>
__device__ __forceinline__ void load_n(const T* __restrict__ p, acc_type_t<T> (&v)[W]) {
  if constexpr (W == 1) {
    v[0] = to_acc(p[0]);
  } else {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = to_acc(pk.v[j]);
  }
}

template <int W, typename T>
__device__ __forceinline__ void store_n(T* __restrict__ p, const acc_type_t<T> (&v)[W]) {
  if constexpr (W == 1) {
    p[0] = from_acc<T>(v[0]);
  } else {
    Pack<T> pk;
#pragma unroll
    for (int j = 0; j < W; ++j) pk.v[j] = from_acc<T>(v[j]);
    *reinterpret_cast<Pack<T>*>(p) = pk;
  }
}

// Calls body.template operator()<W>(i) for this thread's share of chunk `chunk` of a sample of
// m elements: 16-byte packs (W = Pack<T>::kN) when `vec`, then single elements.
template <typename T, typename Body>
__device__ __forceinline__ void sample_loop(int64_t m, int chunk, int bps, bool vec, Body&& body) {
  constexpr int kN = Pack<T>::kN;
  const int64_t stride = int64_t(bps) * kThreads;
  const int64_t first = int64_t(chunk) * kThreads + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t npack = m / kN;
    for (int64_t q = first; q < npack; q += stride) body.template operator()<kN>(q * kN);
    tail = npack * kN;
  }
  for (int64_t i = tail + first; i < m; i += stride) body.template operator()<1>(i);
}

template <typename T, int kLoss>
__global__ void __launch_bounds__(kThreads)
diffusion_fwd_partial_kernel(const T* __restrict__ f, const T* __restrict__ x0,
                             const T* __restrict__ e, DiffusionValues vals,
                             const acc_type_t<T>* __restrict__ uw, DiffusionLossParams p, int64_t m,
                             int bps, double batch_scale, T* __restrict__ grad, bool vec,
                             acc_type_t<T>* __restrict__ partial) {
  using acc_t = acc_type_t<T>;
  const int64_t n = blockIdx.x / bps;
  const int chunk = int(blockIdx.x % bps);
  const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, n));
  const acc_t a = acc_t(k.a), b = acc_t(k.b), c = acc_t(k.c), hc = acc_t(p.huber_c);
  const acc_t gs = grad == nullptr ? acc_t(0)
      : acc_t(diffusion_grad_factor(k.a, k.w, uw != nullptr ? double(uw[n]) : 1.0, m, batch_scale));
  const int64_t base = n * m;
  acc_t acc = acc_t(0);
  sample_loop<T>(m, chunk, bps, vec, [&]<int W>(int64_t i) {
    acc_t fv[W], r[W];
    load_n<W>(f + base + i, fv);
#pragma unroll
    for (int j = 0; j < W; ++j) r[j] = a * fv[j];
    if (x0 != nullptr) {
      acc_t xv[W];
      load_n<W>(x0 + base + i, xv);
#pragma unroll
      for (int j = 0; j < W; ++j) r[j] = r[j] + b * xv[j];
    }
    if (e != nullptr) {
      acc_t ev[W];
      load_n<W>(e + base + i, ev);
#pragma unroll
      for (int j = 0; j < W; ++j) r[j] = r[j] + c * ev[j];
    }
#pragma unroll
    for (int j = 0; j < W; ++j) acc += diffusion_rho<acc_t>(kLoss, r[j], hc);
    if (grad != nullptr) {
      acc_t g[W];
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = gs * diffusion_drho<acc_t>(kLoss, r[j], hc);
      store_n<W>(grad + base + i, g);
    }
  });
  acc = block_sum<acc_t, kThreads>(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename acc_t>
__global__ void __launch_bounds__(kFinishThreads)
diffusion_fwd_finish_kernel(const acc_t* __restrict__ partial, int bps, int64_t n_samples,
                            int64_t m, DiffusionValues vals, const acc_t* __restrict__ uw,
                            DiffusionLossParams p, int64_t reduction, acc_t* __restrict__ loss,
                            acc_t* __restrict__ sample_loss) {
  double total = 0.0;
  for (int64_t n = threadIdx.x; n < n_samples; n += kFinishThreads) {
    double s = 0.0;
    for (int b = 0; b < bps; ++b) s += double(partial[n * bps + b]);
    const double mean = s / double(m);  // m = 0: NaN, as torch's mean over nothing
    const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, n));
    sample_loss[n] = acc_t(k.w * mean);
    const double wl = k.w * mean * (uw != nullptr ? double(uw[n]) : 1.0);
    if (reduction == kReduceNone) loss[n] = acc_t(wl);
    else total += wl;
  }
  if (reduction != kReduceNone) {
    total = block_sum<double, kFinishThreads>(total);
    if (threadIdx.x == 0) {
      loss[0] = acc_t(reduction == kReduceMean ? total / double(n_samples) : total);
    }
  }
}

template <typename T, int kLoss>
__global__ void __launch_bounds__(kThreads)
diffusion_bwd_kernel(const T* __restrict__ f, const T* __restrict__ x0, const T* __restrict__ e,
                     DiffusionValues vals, const acc_type_t<T>* __restrict__ uw,
                     DiffusionLossParams p, int64_t m, int bps, double batch_scale,
                     const acc_type_t<T>* __restrict__ go, bool go_per_sample, T* __restrict__ gf,
                     T* __restrict__ gx, T* __restrict__ ge, bool vec) {
  using acc_t = acc_type_t<T>;
  const int64_t n = blockIdx.x / bps;
  const int chunk = int(blockIdx.x % bps);
  const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, n));
  const acc_t a = acc_t(k.a), b = acc_t(k.b), c = acc_t(k.c), hc = acc_t(p.huber_c);
  const double uwn = uw != nullptr ? double(uw[n]) : 1.0;
  // reduction none: one rounding of go_n * factor * rho'. Scalar reductions: two, as the
  // gradient the forward writes (factor * rho', rounded to T) scaled by grad_output.
  const acc_t g0 = go_per_sample ? acc_t(0) : go[0];
  const double gn = go_per_sample ? double(go[n]) : 1.0;
  const double bs = go_per_sample ? 1.0 : batch_scale;
  const acc_t fa = acc_t(gn * diffusion_grad_factor(k.a, k.w, uwn, m, bs));
  const acc_t fb = acc_t(gn * diffusion_grad_factor(k.b, k.w, uwn, m, bs));
  const acc_t fc = acc_t(gn * diffusion_grad_factor(k.c, k.w, uwn, m, bs));
  const int64_t base = n * m;
  auto scaled = [&](acc_t factor, acc_t d) {
    return go_per_sample ? factor * d : to_acc(from_acc<T>(factor * d)) * g0;
  };
  sample_loop<T>(m, chunk, bps, vec, [&]<int W>(int64_t i) {
    acc_t fv[W], d[W];
    load_n<W>(f + base + i, fv);
#pragma unroll
    for (int j = 0; j < W; ++j) d[j] = a * fv[j];
    if (x0 != nullptr) {
      acc_t xv[W];
      load_n<W>(x0 + base + i, xv);
#pragma unroll
      for (int j = 0; j < W; ++j) d[j] = d[j] + b * xv[j];
    }
    if (e != nullptr) {
      acc_t ev[W];
      load_n<W>(e + base + i, ev);
#pragma unroll
      for (int j = 0; j < W; ++j) d[j] = d[j] + c * ev[j];
    }
#pragma unroll
    for (int j = 0; j < W; ++j) d[j] = diffusion_drho<acc_t>(kLoss, d[j], hc);
    acc_t g[W];
    if (gf != nullptr) {
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = scaled(fa, d[j]);
      store_n<W>(gf + base + i, g);
    }
    if (gx != nullptr) {
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = scaled(fb, d[j]);
      store_n<W>(gx + base + i, g);
    }
    if (ge != nullptr) {
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = scaled(fc, d[j]);
      store_n<W>(ge + base + i, g);
    }
  });
}

// out = p*x + q*y (y may be nullptr: then out2 = q*x, the backward's second output).
template <typename T>
__global__ void __launch_bounds__(kThreads)
diffusion_mix_kernel(const T* __restrict__ x, const T* __restrict__ y, DiffusionValues vals,
                     int64_t kind, int64_t m, int bps, T* __restrict__ out,
                     T* __restrict__ out2, bool vec) {
  using acc_t = acc_type_t<T>;
  const int64_t n = blockIdx.x / bps;
  const int chunk = int(blockIdx.x % bps);
  const MixCoef k = mix_coef(kind, diffusion_value(vals, n));
  const acc_t p = acc_t(k.p), q = acc_t(k.q);
  const int64_t base = n * m;
  sample_loop<T>(m, chunk, bps, vec, [&]<int W>(int64_t i) {
    acc_t xv[W], o[W];
    load_n<W>(x + base + i, xv);
    if (y != nullptr) {
      acc_t yv[W];
      load_n<W>(y + base + i, yv);
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = p * xv[j] + q * yv[j];
      store_n<W>(out + base + i, o);
      return;
    }
    if (out != nullptr) {
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = p * xv[j];
      store_n<W>(out + base + i, o);
    }
    if (out2 != nullptr) {
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = q * xv[j];
      store_n<W>(out2 + base + i, o);
    }
  });
}

template <typename F>
void dispatch_loss(int64_t loss_type, F&& f) {
  switch (loss_type) {
    case kLossL1: f(std::integral_constant<int, kLossL1>{}); break;
    case kLossHuber: f(std::integral_constant<int, kLossHuber>{}); break;
    case kLossPseudoHuber: f(std::integral_constant<int, kLossPseudoHuber>{}); break;
    default: f(std::integral_constant<int, kLossL2>{}); break;
  }
}

// Packs never straddle samples when each sample starts on a 16-byte boundary.
bool packable(int64_t m, int elem_size, std::initializer_list<const void*> ptrs) {
  if ((m * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs) {
    if (!aligned16(p)) return false;
  }
  return true;
}

int elem_size(DType dt) {
  return dt == DType::Double ? 8 : (dt == DType::Float ? 4 : 2);
}

}  // namespace

int diffusion_blocks_per_sample(int64_t n_samples, int64_t m, int device) {
  const int64_t cap = int64_t(sm_count(device)) * blocks_per_sm();  // fill the GPU once
  const int64_t want = (m + int64_t(kThreads) * 8 - 1) / (int64_t(kThreads) * 8);
  const int64_t fill = (cap + (n_samples > 0 ? n_samples : 1) - 1) / (n_samples > 0 ? n_samples : 1);
  const int64_t bps = want < fill ? want : fill;
  return int(bps < 1 ? 1 : bps);
}

cudaError_t launch_diffusion_fwd(const DiffusionLaunch& a, void* loss, void* sample_loss,
                                 void* grad, void* scratch, int bps, cudaStream_t stream) {
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const double bs = diffusion_batch_scale(a.reduction, a.n_samples);
    if (a.n_samples > 0) {
      const bool vec = packable(a.m, elem_size(a.dtype), {a.model_output, a.sample, a.noise, grad});
      dispatch_loss(a.params.loss_type, [&](auto L) {
        diffusion_fwd_partial_kernel<T, decltype(L)::value>
            <<<unsigned(a.n_samples * bps), kThreads, 0, stream>>>(
                static_cast<const T*>(a.model_output), static_cast<const T*>(a.sample),
                static_cast<const T*>(a.noise), a.values, static_cast<const acc_t*>(a.weight),
                a.params, a.m, bps, bs, static_cast<T*>(grad), vec,
                static_cast<acc_t*>(scratch));
      });
    }
    diffusion_fwd_finish_kernel<acc_t><<<1, kFinishThreads, 0, stream>>>(
        static_cast<const acc_t*>(scratch), bps, a.n_samples, a.m, a.values,
        static_cast<const acc_t*>(a.weight), a.params, a.reduction, static_cast<acc_t*>(loss),
        static_cast<acc_t*>(sample_loss));
  });
}

cudaError_t launch_diffusion_bwd(const DiffusionLaunch& a, const void* grad_output,
                                 void* grad_model_output, void* grad_sample, void* grad_noise,
                                 int bps, cudaStream_t stream) {
  if (a.n_samples == 0 || a.m == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type_t<T>;
    const bool vec = packable(a.m, elem_size(a.dtype), {a.model_output, a.sample, a.noise,
                                                        grad_model_output, grad_sample, grad_noise});
    dispatch_loss(a.params.loss_type, [&](auto L) {
      diffusion_bwd_kernel<T, decltype(L)::value>
          <<<unsigned(a.n_samples * bps), kThreads, 0, stream>>>(
              static_cast<const T*>(a.model_output), static_cast<const T*>(a.sample),
              static_cast<const T*>(a.noise), a.values, static_cast<const acc_t*>(a.weight),
              a.params, a.m, bps, diffusion_batch_scale(a.reduction, a.n_samples),
              static_cast<const acc_t*>(grad_output), a.reduction == kReduceNone,
              static_cast<T*>(grad_model_output), static_cast<T*>(grad_sample),
              static_cast<T*>(grad_noise), vec);
    });
  });
}

cudaError_t launch_diffusion_mix(const MixLaunch& a, void* out, int bps, cudaStream_t stream) {
  if (a.n_samples == 0 || a.m == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = packable(a.m, elem_size(a.dtype), {a.sample, a.noise, out});
    diffusion_mix_kernel<T><<<unsigned(a.n_samples * bps), kThreads, 0, stream>>>(
        static_cast<const T*>(a.sample), static_cast<const T*>(a.noise), a.values, a.kind, a.m,
        bps, static_cast<T*>(out), nullptr, vec);
  });
}

cudaError_t launch_diffusion_mix_bwd(const MixLaunch& a, void* grad_sample, void* grad_noise,
                                     int bps, cudaStream_t stream) {
  if (a.n_samples == 0 || a.m == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = packable(a.m, elem_size(a.dtype), {a.sample, grad_sample, grad_noise});
    diffusion_mix_kernel<T><<<unsigned(a.n_samples * bps), kThreads, 0, stream>>>(
        static_cast<const T*>(a.sample), nullptr, a.values, a.kind, a.m, bps,
        static_cast<T*>(grad_sample), static_cast<T*>(grad_noise), vec);
  });
}

}  // namespace fastgenloss
