// CPU kernels of the fused pixel losses, included only by the per-dtype translation units that
// CMake generates (FGL_PIXEL_CPU_INSTANTIATE below: four that compile in parallel); cpu.cpp
// holds the ops and dispatches on the dtype.
//
// Forward (scalar reduction): one pass reads input, target (and weight) once and, when asked,
// writes the input gradient in the same pass: 2-3 reads + 0-1 write per element, ~10 flops.
// Work is split into fixed blocks of kBlock elements whose partial sums are added in block
// order, so the result has the same bits for any thread count. Half and bfloat16 accumulate in
// float; block partials are added in double.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/cpu_simd.h"
#include "pixel/cpu.h"
#include "pixel/ops.h"

namespace fastgenloss {
namespace {


constexpr int64_t kBlock = 8192;       // elements per deterministic partial sum
constexpr int64_t kGrainElems = 32768; // below this, one thread does the whole loop


// Calls f(std::bool_constant<sqrt>, std::integral_constant<int, piecewise>) for the terms in use.
template <typename F>
void dispatch_terms(PixelTermsUsed t, F&& f) {
  auto with_sqrt = [&](auto S) {
    switch (t.piecewise) {
      case kPieceNone: f(S, std::integral_constant<int, kPieceNone>{}); break;
      case kPieceHuber: f(S, std::integral_constant<int, kPieceHuber>{}); break;
      default: f(S, std::integral_constant<int, kPieceBoth>{}); break;
    }
  };
  if (t.sqrt_term) with_sqrt(std::true_type{});
  else with_sqrt(std::false_type{});
}

template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// How a run of elements reads its weights: none; w[i] (laid out like the input); or one value
// for the whole run (a broadcast dim innermost).
constexpr int kWNone = 0, kWDense = 1, kWScalar = 2;

template <int kW, typename scalar_t, typename acc_t>
inline acc_t weight_at(const scalar_t* w, int64_t i) {
  if constexpr (kW == kWDense) return acc_t(w[i]);
  else if constexpr (kW == kWScalar) return acc_t(w[0]);
  else return acc_t(1);
}

// Calls run(i0, i1, w_run, kind) over [b0, b1), split where the weight's innermost run ends;
// within a call, element i's weight is weight_at<kind>(w_run, i - i0).
template <typename scalar_t, typename F>
void for_weight_runs(const scalar_t* w, const WeightIndex* idx, int64_t b0, int64_t b1, F&& run) {
  if (w == nullptr) {
    run(b0, b1, w, std::integral_constant<int, kWNone>{});
  } else if (idx == nullptr) {
    run(b0, b1, w + b0, std::integral_constant<int, kWDense>{});
  } else {
    const int64_t inner = weight_inner_size(*idx);
    for (int64_t i = b0; i < b1;) {
      const int64_t end = std::min(b1, (i / inner + 1) * inner);
      if (weight_inner_stride(*idx) == 0) run(i, end, w + weight_offset(*idx, i), std::integral_constant<int, kWScalar>{});
      else run(i, end, w + weight_offset(*idx, i), std::integral_constant<int, kWDense>{});
      i = end;
    }
  }
}

constexpr int kLanes = 16;

// Lane accumulators of one block: kLanes independent sums keep the loop in vector registers.
template <typename acc_t>
struct LaneSums {
  acc_t v[kLanes] = {};
  acc_t w[kLanes] = {};
};

// Adds w*l (and w) of one run to the lane sums, optionally writing grad_scale*w*dl/dd.
template <typename scalar_t, bool kSqrt, int kPiece, int kW, bool kGrad>
FGL_CPU_MULTIVERSION void pixel_run_fwd(const scalar_t* __restrict__ x,
                                        const scalar_t* __restrict__ y,
                                        const scalar_t* __restrict__ w, scalar_t* __restrict__ g,
                                        int64_t len, const PixelCoeffs<acc_type_t<scalar_t>>& c,
                                        acc_type_t<scalar_t> grad_scale,
                                        LaneSums<acc_type_t<scalar_t>>& sums) {
  using acc_t = acc_type_t<scalar_t>;
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t d = acc_t(x[i + j]) - acc_t(y[i + j]);
      const acc_t wj = weight_at<kW, scalar_t, acc_t>(w, i + j);
      acc_t v = pixel_value<kSqrt, kPiece>(c, d);
      if constexpr (kW != kWNone) {
        v *= wj;
        sums.w[j] += wj;
      }
      sums.v[j] += v;
      if constexpr (kGrad) g[i + j] = scalar_t(grad_scale * wj * pixel_deriv<kSqrt, kPiece>(c, d));
    }
  }
  // The tail (all of a run shorter than kLanes: a weight broadcast along short rows) spreads
  // over the lanes too, so no single accumulator sums a whole block in sequence.
  for (; i < len; ++i) {
    const int j = int(i % kLanes);
    const acc_t d = acc_t(x[i]) - acc_t(y[i]);
    const acc_t wi = weight_at<kW, scalar_t, acc_t>(w, i);
    acc_t v = pixel_value<kSqrt, kPiece>(c, d);
    if constexpr (kW != kWNone) {
      v *= wi;
      sums.w[j] += wi;
    }
    sums.v[j] += v;
    if constexpr (kGrad) g[i] = scalar_t(grad_scale * wi * pixel_deriv<kSqrt, kPiece>(c, d));
  }
}

template <typename scalar_t>
void pixel_fwd_reduce(const PixelOperands& o, at::Tensor* grad, const PixelParams& p,
                      at::Tensor& loss, at::Tensor* wsum_t) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = o.x.numel();
  const auto c = p.coeffs<acc_t>();
  const scalar_t* xp = o.x.const_data_ptr<scalar_t>();
  const scalar_t* yp = o.y.const_data_ptr<scalar_t>();
  const scalar_t* wp = o.w.has_value() ? o.w->const_data_ptr<scalar_t>() : nullptr;
  const WeightIndex* widx = o.weight_index();
  scalar_t* gp = grad ? grad->mutable_data_ptr<scalar_t>() : nullptr;
  // Mean and sum know their gradient scale now; the weighted means divide by sum(w) later.
  const acc_t grad_scale = pixel_grad_pre_scale<acc_t>(p.reduction, n);

  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(2 * nblocks, 0.0);
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    dispatch_bool(gp != nullptr, [&](auto G) {
      at::parallel_for(0, nblocks, std::max<int64_t>(1, kGrainElems / kBlock),
                       [&](int64_t blk0, int64_t blk1) {
        for (int64_t b = blk0; b < blk1; ++b) {
          const int64_t b0 = b * kBlock, b1 = std::min(n, b0 + kBlock);
          LaneSums<acc_t> sums;
          for_weight_runs(wp, widx, b0, b1, [&](int64_t i0, int64_t i1, const scalar_t* w, auto W) {
            pixel_run_fwd<scalar_t, decltype(S)::value, decltype(P)::value, decltype(W)::value,
                          decltype(G)::value>(xp + i0, yp + i0, w, gp ? gp + i0 : nullptr, i1 - i0,
                                              c, grad_scale, sums);
          });
          double s = 0.0, ws = 0.0;
          for (int j = 0; j < kLanes; ++j) {
            s += double(sums.v[j]);
            ws += double(sums.w[j]);
          }
          partial[2 * b] = s;
          partial[2 * b + 1] = ws;
        }
      });
    });
  });
  double total = 0.0, wsum = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) {
    total += partial[2 * b];
    wsum += partial[2 * b + 1];
  }
  loss.fill_(pixel_reduce_finish<double>(p.reduction, total, wsum, n));
  if (wsum_t) wsum_t->fill_(wsum);
}

template <typename scalar_t, bool kS, int kP, int kW>
FGL_CPU_MULTIVERSION void pixel_run_none(const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ y,
                                         const scalar_t* __restrict__ w,
                                         scalar_t* __restrict__ out, int64_t len,
                                         const PixelCoeffs<acc_type_t<scalar_t>>& c) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = 0; i < len; ++i) {
    const acc_t v = pixel_value<kS, kP>(c, acc_t(x[i]) - acc_t(y[i]));
    out[i] = scalar_t(kW == kWNone ? v : weight_at<kW, scalar_t, acc_t>(w, i) * v);
  }
}

template <typename scalar_t>
void pixel_fwd_none(const PixelOperands& o, const PixelParams& p, at::Tensor& out) {
  using acc_t = acc_type_t<scalar_t>;
  const auto c = p.coeffs<acc_t>();
  const scalar_t* xp = o.x.const_data_ptr<scalar_t>();
  const scalar_t* yp = o.y.const_data_ptr<scalar_t>();
  const scalar_t* wp = o.w.has_value() ? o.w->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    at::parallel_for(0, o.x.numel(), kGrainElems, [&](int64_t b0, int64_t b1) {
      for_weight_runs(wp, o.weight_index(), b0, b1, [&](int64_t i0, int64_t i1, const scalar_t* w, auto W) {
        pixel_run_none<scalar_t, decltype(S)::value, decltype(P)::value, decltype(W)::value>(
            xp + i0, yp + i0, w, op + i0, i1 - i0, c);
      });
    });
  });
}

// How pixel_bwd reads grad_output: one scalar of a reducing op; per element (reduction none); or
// one value broadcast to every element (reduction none under .mean()/.sum(): autograd passes an
// expanded scalar, which is read in place rather than materialized).
constexpr int kGoReduced = 0, kGoElementwise = 1, kGoBroadcast = 2;

// grad_input of a run. Reduced: post * round(pre * w * dl/dd), the same two roundings as the
// forward-written gradient. Reduction none: g * w * dl/dd, rounded once, as torch.
template <typename scalar_t, bool kS, int kP, int kW, int kGo>
FGL_CPU_MULTIVERSION void pixel_run_grad_input(const scalar_t* __restrict__ go,
                                               const scalar_t* __restrict__ x,
                                               const scalar_t* __restrict__ y,
                                               const scalar_t* __restrict__ w,
                                               scalar_t* __restrict__ gi, int64_t len,
                                               const PixelCoeffs<acc_type_t<scalar_t>>& c,
                                               acc_type_t<scalar_t> pre, acc_type_t<scalar_t> post) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = 0; i < len; ++i) {
    const acc_t d = acc_t(x[i]) - acc_t(y[i]);
    const acc_t wi = weight_at<kW, scalar_t, acc_t>(w, i);
    if constexpr (kGo == kGoElementwise) {
      gi[i] = scalar_t(acc_t(go[i]) * wi * pixel_deriv<kS, kP>(c, d));
    } else if constexpr (kGo == kGoBroadcast) {
      gi[i] = scalar_t(post * wi * pixel_deriv<kS, kP>(c, d));
    } else {
      gi[i] = scalar_t(acc_t(scalar_t(pre * wi * pixel_deriv<kS, kP>(c, d))) * post);
    }
  }
}

// grad_input = d(loss)/d(input) and grad_weight = d(loss)/d(weight), from grad_output.
template <typename scalar_t>
void pixel_bwd_impl(const at::Tensor& go, const PixelOperands& o, const at::Tensor& loss,
                    const at::Tensor& wsum_t, const PixelParams& p, at::Tensor* gi, at::Tensor* gw) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = o.x.numel();
  const auto c = p.coeffs<acc_t>();
  const bool elementwise_go = p.reduction == kReduceNone && go.numel() != 1;
  const int go_mode = p.reduction != kReduceNone ? kGoReduced
                      : (elementwise_go ? kGoElementwise : kGoBroadcast);
  const scalar_t* gop = go.const_data_ptr<scalar_t>();
  const scalar_t* xp = o.x.const_data_ptr<scalar_t>();
  const scalar_t* yp = o.y.const_data_ptr<scalar_t>();
  const scalar_t* wp = o.w.has_value() ? o.w->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* gip = gi ? gi->mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gwp = gw ? gw->mutable_data_ptr<scalar_t>() : nullptr;
  const bool weighted_mean = p.reduction == kReduceWeightMean || p.reduction == kReduceMaskedMean;
  const acc_t wsum = weighted_mean ? acc_t(wsum_t.item<double>()) : acc_t(0);
  const acc_t loss_v = (weighted_mean && gwp) ? acc_t(loss.item<double>()) : acc_t(0);
  const acc_t go0 = elementwise_go ? acc_t(0) : acc_t(gop[0]);
  const acc_t pre = pixel_grad_pre_scale<acc_t>(p.reduction, n);
  // (for reduction none with a broadcast grad_output, post_scale is go0 itself)
  const acc_t post = elementwise_go ? acc_t(0) : pixel_grad_post_scale<acc_t>(p.reduction, go0, wsum);
  const acc_t wscale = elementwise_go ? acc_t(0) : pixel_reduce_scale<acc_t>(p.reduction, go0, wsum, n);
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    constexpr bool kS = decltype(S)::value;
    constexpr int kP = decltype(P)::value;
    if (gip) {
      auto with_go = [&](auto G) {
        at::parallel_for(0, n, kGrainElems, [&](int64_t b0, int64_t b1) {
          for_weight_runs(wp, o.weight_index(), b0, b1, [&](int64_t i0, int64_t i1, const scalar_t* w, auto W) {
            pixel_run_grad_input<scalar_t, kS, kP, decltype(W)::value, decltype(G)::value>(
                decltype(G)::value == kGoElementwise ? gop + i0 : gop, xp + i0, yp + i0, w, gip + i0, i1 - i0,
                c, pre, post);
          });
        });
      };
      if (go_mode == kGoElementwise) with_go(std::integral_constant<int, kGoElementwise>{});
      else if (go_mode == kGoBroadcast) with_go(std::integral_constant<int, kGoBroadcast>{});
      else with_go(std::integral_constant<int, kGoReduced>{});
    }
    if (gwp) {  // weight gradients are rarer: one general loop (it reads no weight)
      at::parallel_for(0, n, kGrainElems, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const acc_t s = elementwise_go ? acc_t(gop[i]) : wscale;
          const acc_t l = pixel_value<kS, kP>(c, acc_t(xp[i]) - acc_t(yp[i]));
          gwp[i] = scalar_t(pixel_weight_grad<acc_t>(p.reduction, s, l, loss_v));
        }
      });
    }
  });
}

}  // namespace

namespace pixel_cpu {

// The entry points of cpu.cpp (declared in cpu.h).
template <typename scalar_t>
void fwd_reduce(const PixelOperands& o, at::Tensor* grad, const PixelParams& p, at::Tensor& loss,
                at::Tensor* wsum) {
  pixel_fwd_reduce<scalar_t>(o, grad, p, loss, wsum);
}

template <typename scalar_t>
void fwd_none(const PixelOperands& o, const PixelParams& p, at::Tensor& out) {
  pixel_fwd_none<scalar_t>(o, p, out);
}

template <typename scalar_t>
void bwd(const at::Tensor& go, const PixelOperands& o, const at::Tensor& loss,
         const at::Tensor& wsum, const PixelParams& p, at::Tensor* gi, at::Tensor* gw) {
  pixel_bwd_impl<scalar_t>(go, o, loss, wsum, p, gi, gw);
}

}  // namespace pixel_cpu
}  // namespace fastgenloss

// The explicit instantiations of one dtype's entry points (one generated translation unit each:
// fgl_per_dtype in CMakeLists.txt).
#define FGL_PIXEL_CPU_INSTANTIATE(T)                                                          \
  namespace fastgenloss::pixel_cpu {                                                          \
  template void fwd_reduce<T>(const PixelOperands&, at::Tensor*, const PixelParams&,          \
                              at::Tensor&, at::Tensor*);                                      \
  template void fwd_none<T>(const PixelOperands&, const PixelParams&, at::Tensor&);           \
  template void bwd<T>(const at::Tensor&, const PixelOperands&, const at::Tensor&,            \
                       const at::Tensor&, const PixelParams&, at::Tensor*, at::Tensor*);      \
  }
