// CPU kernels of the fused pixel losses.
//
// Forward (scalar reduction): one pass reads input, target (and weight) once and, when asked,
// writes the input gradient in the same pass: 2-3 reads + 0-1 write per element, ~10 flops.
// Work is split into fixed blocks of kBlock elements whose partial sums are added in block
// order, so the result has the same bits for any thread count. Half and bfloat16 accumulate in
// float; block partials are added in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "fastgenloss/pixel_ops.h"

namespace fastgenloss {
namespace {

// The hot loops are compiled twice, for AVX2 and for the x86-64 baseline, and the CPU picks one
// at load time (an ifunc). Functions they inline are compiled inside each clone; out-of-line
// code keeps the baseline ISA, so nothing AVX2 can leak into the baseline path.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FGL_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FGL_CPU_MULTIVERSION
#endif

constexpr int64_t kBlock = 8192;       // elements per deterministic partial sum
constexpr int64_t kGrainElems = 32768; // below this, one thread does the whole loop

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

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

// Sum of w*l over one block (and of w), optionally writing grad_scale*w*dl/dd.
// kLanes independent accumulators let the compiler keep the loop in vector registers.
template <typename scalar_t, bool kSqrt, int kPiece, bool kWeight, bool kGrad>
FGL_CPU_MULTIVERSION void pixel_block_fwd(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                     const scalar_t* __restrict__ w, scalar_t* __restrict__ g, int64_t len, const PixelCoeffs<acc_type_t<scalar_t>>& c,
                     acc_type_t<scalar_t> grad_scale, double* sum_out, double* wsum_out) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr int kLanes = 16;
  acc_t acc[kLanes] = {};
  acc_t wacc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t d = acc_t(x[i + j]) - acc_t(y[i + j]);
      acc_t v = pixel_value<kSqrt, kPiece>(c, d);
      acc_t wj = acc_t(1);
      if constexpr (kWeight) {
        wj = acc_t(w[i + j]);
        v *= wj;
        wacc[j] += wj;
      }
      acc[j] += v;
      if constexpr (kGrad) {
        g[i + j] = scalar_t(grad_scale * wj * pixel_deriv<kSqrt, kPiece>(c, d));
      }
    }
  }
  for (; i < len; ++i) {
    const acc_t d = acc_t(x[i]) - acc_t(y[i]);
    acc_t v = pixel_value<kSqrt, kPiece>(c, d);
    acc_t wi = acc_t(1);
    if constexpr (kWeight) {
      wi = acc_t(w[i]);
      v *= wi;
      wacc[0] += wi;
    }
    acc[0] += v;
    if constexpr (kGrad) g[i] = scalar_t(grad_scale * wi * pixel_deriv<kSqrt, kPiece>(c, d));
  }
  double s = 0.0, ws = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    s += double(acc[j]);
    ws += double(wacc[j]);
  }
  *sum_out = s;
  *wsum_out = ws;
}

template <typename scalar_t>
void pixel_fwd_reduce(const at::Tensor& x, const at::Tensor& y, const at::Tensor* w,
                      at::Tensor* grad, const PixelParams& p, at::Tensor& loss,
                      at::Tensor* wsum_t) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = x.numel();
  const auto c = p.coeffs<acc_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* wp = w ? w->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* gp = grad ? grad->mutable_data_ptr<scalar_t>() : nullptr;
  // Mean and sum know their gradient scale now; the weighted means divide by sum(w) later.
  const acc_t grad_scale = pixel_grad_pre_scale<acc_t>(p.reduction, n);

  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(2 * nblocks, 0.0);
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    dispatch_bool(wp != nullptr, [&](auto W) {
      dispatch_bool(gp != nullptr, [&](auto G) {
        at::parallel_for(0, nblocks, std::max<int64_t>(1, kGrainElems / kBlock),
                         [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t off = b * kBlock;
            const int64_t len = std::min(kBlock, n - off);
            pixel_block_fwd<scalar_t, decltype(S)::value, decltype(P)::value, decltype(W)::value,
                            decltype(G)::value>(
                xp + off, yp + off, wp ? wp + off : nullptr, gp ? gp + off : nullptr, len, c,
                grad_scale, &partial[2 * b], &partial[2 * b + 1]);
          }
        });
      });
    });
  });
  double total = 0.0, wsum = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) {
    total += partial[2 * b];
    wsum += partial[2 * b + 1];
  }
  const double result = pixel_reduce_finish<double>(p.reduction, total, wsum, n);
  loss.fill_(result);
  if (wsum_t) wsum_t->fill_(wsum);
}

template <typename scalar_t, bool kS, int kP, bool kW>
FGL_CPU_MULTIVERSION void pixel_none_range(const scalar_t* __restrict__ x,
                                           const scalar_t* __restrict__ y,
                                           const scalar_t* __restrict__ w,
                                           scalar_t* __restrict__ out, int64_t i0, int64_t i1,
                                           const PixelCoeffs<acc_type_t<scalar_t>>& c) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t v = pixel_value<kS, kP>(c, acc_t(x[i]) - acc_t(y[i]));
    out[i] = scalar_t(kW ? acc_t(w[i]) * v : v);
  }
}

template <typename scalar_t>
void pixel_fwd_none(const at::Tensor& x, const at::Tensor& y, const at::Tensor* w,
                    const PixelParams& p, at::Tensor& out) {
  using acc_t = acc_type_t<scalar_t>;
  const auto c = p.coeffs<acc_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* wp = w ? w->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    dispatch_bool(wp != nullptr, [&](auto W) {
      at::parallel_for(0, x.numel(), kGrainElems, [&](int64_t i0, int64_t i1) {
        pixel_none_range<scalar_t, decltype(S)::value, decltype(P)::value, decltype(W)::value>(
            xp, yp, wp, op, i0, i1, c);
      });
    });
  });
}

// How pixel_bwd reads grad_output: one scalar of a reducing op; per element (reduction none); or
// one value broadcast to every element (reduction none under .mean()/.sum(): autograd passes an
// expanded scalar, which is read in place rather than materialized).
constexpr int kGoReduced = 0, kGoElementwise = 1, kGoBroadcast = 2;

// grad_input of a range. Reduced: post * round(pre * w * dl/dd), the same two roundings as the
// forward-written gradient. Reduction none: g * w * dl/dd, rounded once, as torch.
template <typename scalar_t, bool kS, int kP, bool kW, int kGo>
FGL_CPU_MULTIVERSION void pixel_grad_input_range(const scalar_t* __restrict__ go, const scalar_t* __restrict__ x,
                            const scalar_t* __restrict__ y, const scalar_t* __restrict__ w,
                            scalar_t* __restrict__ gi, int64_t i0, int64_t i1,
                            const PixelCoeffs<acc_type_t<scalar_t>>& c, acc_type_t<scalar_t> pre,
                            acc_type_t<scalar_t> post) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t d = acc_t(x[i]) - acc_t(y[i]);
    const acc_t wi = kW ? acc_t(w[i]) : acc_t(1);
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
void pixel_bwd_impl(const at::Tensor& go, const at::Tensor& x, const at::Tensor& y,
                    const at::Tensor* w, const at::Tensor& loss, const at::Tensor& wsum_t,
                    const PixelParams& p, at::Tensor* gi, at::Tensor* gw) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = x.numel();
  const auto c = p.coeffs<acc_t>();
  const bool elementwise_go = p.reduction == kReduceNone && go.numel() != 1;
  const int go_mode = p.reduction != kReduceNone ? kGoReduced
                      : (elementwise_go ? kGoElementwise : kGoBroadcast);
  const scalar_t* gop = go.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* wp = w ? w->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* gip = gi ? gi->mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gwp = gw ? gw->mutable_data_ptr<scalar_t>() : nullptr;
  const bool weighted_mean = p.reduction == kReduceWeightMean || p.reduction == kReduceMaskedMean;
  const acc_t wsum = weighted_mean ? acc_t(wsum_t.item<double>()) : acc_t(0);
  const acc_t loss_v = (weighted_mean && gwp) ? acc_t(loss.item<double>()) : acc_t(0);
  const acc_t go0 = elementwise_go ? acc_t(0) : acc_t(gop[0]);
  const acc_t pre = pixel_grad_pre_scale<acc_t>(p.reduction, n);
  const acc_t post = elementwise_go ? acc_t(0) : pixel_grad_post_scale<acc_t>(p.reduction, go0, wsum);
  // (reduction none with a broadcast grad_output: post_scale of kReduceNone is go0 itself)
  const acc_t wscale = elementwise_go ? acc_t(0) : pixel_reduce_scale<acc_t>(p.reduction, go0, wsum, n);
  dispatch_terms(p.terms(), [&](auto S, auto P) {
    constexpr bool kS = decltype(S)::value;
    constexpr int kP = decltype(P)::value;
    if (gip) {
      dispatch_bool(wp != nullptr, [&](auto W) {
        auto run = [&](auto G) {
          at::parallel_for(0, n, kGrainElems, [&](int64_t i0, int64_t i1) {
            pixel_grad_input_range<scalar_t, kS, kP, decltype(W)::value, decltype(G)::value>(
                gop, xp, yp, wp, gip, i0, i1, c, pre, post);
          });
        };
        if (go_mode == kGoElementwise) run(std::integral_constant<int, kGoElementwise>{});
        else if (go_mode == kGoBroadcast) run(std::integral_constant<int, kGoBroadcast>{});
        else run(std::integral_constant<int, kGoReduced>{});
      });
    }
    if (gwp) {  // weight gradients are rarer: one general loop
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

at::Tensor empty0(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_fwd_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool write_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  const PixelOperands o = pixel_operands("fastgenloss::pixel_fwd", input, target, weight, p);
  const at::Tensor &x = o.x, &y = o.y;
  const at::Tensor* wp = o.weight();
  const bool weighted_mean = reduction == kReduceWeightMean || reduction == kReduceMaskedMean;
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;

  at::Tensor loss, grad = empty0(input);
  at::Tensor wsum = weighted_mean ? at::empty({}, input.options().dtype(acc_dtype))
                                  : at::empty({0}, input.options().dtype(acc_dtype));
  if (reduction == kReduceNone) {
    loss = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_fwd_cpu", [&] {
      pixel_fwd_none<scalar_t>(x, y, wp, p, loss);
    });
  } else {
    loss = at::empty({}, input.options());
    if (write_grad) grad = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_fwd_cpu", [&] {
      pixel_fwd_reduce<scalar_t>(x, y, wp, write_grad ? &grad : nullptr, p, loss,
                                 weighted_mean ? &wsum : nullptr);
    });
  }
  return {loss, grad, wsum};
}

std::tuple<at::Tensor, at::Tensor> pixel_bwd_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& loss, const at::Tensor& weight_sum,
    double l1, double mse, double charbonnier, double huber, double smooth_l1, double eps,
    double delta, double beta, int64_t reduction, bool input_grad, bool weight_grad) {
  const PixelParams p{l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, reduction};
  TORCH_CHECK(!weight_grad || weight.has_value(), "fastgenloss::pixel_bwd: weight_grad needs a weight");
  const PixelOperands o = pixel_operands("fastgenloss::pixel_bwd", input, target, weight, p);
  const at::Tensor &x = o.x, &y = o.y;
  const at::Tensor go = pixel_grad_output(grad_output, input, x, reduction);
  at::Tensor gi = input_grad ? at::empty_like(x) : empty0(input);
  at::Tensor gw = weight_grad ? at::empty_like(x) : empty0(input);
  if (x.numel() > 0 && (input_grad || weight_grad)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_bwd_cpu", [&] {
      pixel_bwd_impl<scalar_t>(go, x, y, o.weight(), loss, weight_sum, p,
                               input_grad ? &gi : nullptr, weight_grad ? &gw : nullptr);
    });
  }
  return {gi, gw};
}

}  // namespace fastgenloss
