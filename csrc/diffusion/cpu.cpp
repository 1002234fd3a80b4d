// CPU kernels of the diffusion losses and noising ops.
//
// Data are [N, M] in memory (sample-major). Each sample is cut into fixed blocks of kBlock
// elements; a block's partial sum depends only on its elements, and blocks are added per
// sample in order, so the result has the same bits for any thread count. Per element the
// forward reads model_output and the one or two other inputs the loss depends on, and writes
// the model_output gradient in the same pass when asked: memory bound.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/cpu_simd.h"
#include "diffusion/ops.h"

namespace fastgenloss {
namespace {


constexpr int64_t kBlock = 8192;        // elements per deterministic partial sum
constexpr int64_t kGrainElems = 32768;  // below this, one thread does the whole loop
constexpr int kLanes = 16;


// Which inputs the residual reads: model_output always, then sample and/or noise.
constexpr int kInNoise = 0, kInSample = 1, kInBoth = 2;

template <typename acc_t>
struct BlockCoef {
  acc_t a, b, c, hc;
};

// r = a*f + b*x + c*e in the order the CUDA kernel uses (no contraction: -ffp-contract=off).
template <int kIn, typename scalar_t, typename acc_t>
inline acc_t residual(const BlockCoef<acc_t>& k, const scalar_t* f, const scalar_t* x,
                      const scalar_t* e, int64_t i) {
  acc_t r = k.a * acc_t(f[i]);
  if constexpr (kIn != kInNoise) r = r + k.b * acc_t(x[i]);
  if constexpr (kIn != kInSample) r = r + k.c * acc_t(e[i]);
  return r;
}

// Sum of rho(r) over one block; writes gs * rho'(r) to g when kGrad.
template <typename scalar_t, int kLoss, int kIn, bool kGrad>
FGL_CPU_MULTIVERSION double fwd_block(const scalar_t* __restrict__ f,
                                      const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ e, scalar_t* __restrict__ g,
                                      int64_t len, BlockCoef<acc_type_t<scalar_t>> k,
                                      acc_type_t<scalar_t> gs) {
  using acc_t = acc_type_t<scalar_t>;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t r = residual<kIn>(k, f, x, e, i + j);
      lanes[j] += diffusion_rho<acc_t>(kLoss, r, k.hc);
      if constexpr (kGrad) g[i + j] = scalar_t(gs * diffusion_drho<acc_t>(kLoss, r, k.hc));
    }
  }
  for (int j = 0; i < len; ++i, ++j) {
    const acc_t r = residual<kIn>(k, f, x, e, i);
    lanes[j] += diffusion_rho<acc_t>(kLoss, r, k.hc);
    if constexpr (kGrad) g[i] = scalar_t(gs * diffusion_drho<acc_t>(kLoss, r, k.hc));
  }
  double s = 0.0;
  for (int j = 0; j < kLanes; ++j) s += double(lanes[j]);
  return s;
}

// rho'(r) of one block into d.
template <typename scalar_t, int kLoss, int kIn>
FGL_CPU_MULTIVERSION void drho_block(const scalar_t* __restrict__ f,
                                     const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ e,
                                     acc_type_t<scalar_t>* __restrict__ d, int64_t len,
                                     BlockCoef<acc_type_t<scalar_t>> k) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = 0; i < len; ++i) {
    d[i] = diffusion_drho<acc_t>(kLoss, residual<kIn>(k, f, x, e, i), k.hc);
  }
}

// out = factor * d (one rounding, reduction none) or round(factor * d) * go (two roundings,
// as the forward-written gradient scaled by a scalar grad_output).
template <typename scalar_t, bool kPerSample>
FGL_CPU_MULTIVERSION void scale_block(const acc_type_t<scalar_t>* __restrict__ d,
                                      scalar_t* __restrict__ out, int64_t len,
                                      acc_type_t<scalar_t> factor, acc_type_t<scalar_t> go) {
  using acc_t = acc_type_t<scalar_t>;
  for (int64_t i = 0; i < len; ++i) {
    if constexpr (kPerSample) out[i] = scalar_t(factor * d[i]);
    else out[i] = scalar_t(acc_t(scalar_t(factor * d[i])) * go);
  }
}

// out = p*x + q*y, or (y == nullptr) out = p*x and out2 = q*x.
template <typename scalar_t>
FGL_CPU_MULTIVERSION void mix_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                    scalar_t* __restrict__ out, scalar_t* __restrict__ out2,
                                    int64_t len, acc_type_t<scalar_t> p, acc_type_t<scalar_t> q) {
  using acc_t = acc_type_t<scalar_t>;
  if (y != nullptr) {
    for (int64_t i = 0; i < len; ++i) out[i] = scalar_t(p * acc_t(x[i]) + q * acc_t(y[i]));
    return;
  }
  if (out != nullptr) {
    for (int64_t i = 0; i < len; ++i) out[i] = scalar_t(p * acc_t(x[i]));
  }
  if (out2 != nullptr) {
    for (int64_t i = 0; i < len; ++i) out2[i] = scalar_t(q * acc_t(x[i]));
  }
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

template <typename F>
void dispatch_inputs(bool use_sample, bool use_noise, F&& f) {
  if (!use_sample) f(std::integral_constant<int, kInNoise>{});
  else if (!use_noise) f(std::integral_constant<int, kInSample>{});
  else f(std::integral_constant<int, kInBoth>{});
}

// Blocks of the [N, M] grid: sample n, block j covers [j*kBlock, min(M, (j+1)*kBlock)).
struct BlockGrid {
  int64_t n, m, per_sample;
  int64_t count() const { return n * per_sample; }
  int64_t grain() const { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, std::min(m, kBlock))); }
  template <typename F>  // f(block index, sample, first element, length)
  void parallel(F&& f) const {
    at::parallel_for(0, count(), grain(), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t s = b / per_sample, j0 = (b % per_sample) * kBlock;
        f(b, s, j0, std::min(m, j0 + kBlock) - j0);
      }
    });
  }
};

BlockGrid grid_of(int64_t n, int64_t m) {
  return BlockGrid{n, m, std::max<int64_t>(1, (m + kBlock - 1) / kBlock)};
}

DiffusionLossParams params_of(int64_t schedule, int64_t prediction, int64_t weighting,
                              int64_t loss_type, double snr_gamma, double huber_c,
                              double sigma_data) {
  return DiffusionLossParams{schedule, prediction, weighting, loss_type, snr_gamma, huber_c, sigma_data};
}

template <typename acc_t>
double weight_of(const std::optional<at::Tensor>& w, int64_t n) {
  return w.has_value() ? double(w->const_data_ptr<acc_t>()[n]) : 1.0;
}

}  // namespace

DiffusionFwdOut diffusion_fwd_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                                  const at::Tensor& noise, const at::Tensor& t,
                                  const std::optional<at::Tensor>& table,
                                  const std::optional<at::Tensor>& weight, int64_t schedule,
                                  int64_t prediction, int64_t weighting, int64_t loss_type,
                                  double snr_gamma, double huber_c, double sigma_data,
                                  int64_t reduction, bool write_grad) {
  const DiffusionLossParams p = params_of(schedule, prediction, weighting, loss_type, snr_gamma,
                                          huber_c, sigma_data);
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum,
              "fastgenloss::diffusion_fwd: unknown reduction code ", reduction);
  const DiffusionOperands o = diffusion_operands("fastgenloss::diffusion_fwd", model_output,
                                                 sample, noise, t, table, weight, p);
  const DiffusionValues vals = o.sched.values();
  const auto acc_dtype = acc_scalar_type(o.f.scalar_type());
  const auto acc_opts = o.f.options().dtype(acc_dtype);
  at::Tensor loss = reduction == kReduceNone ? at::empty({o.n}, acc_opts) : at::empty({}, acc_opts);
  at::Tensor sample_loss = at::empty({o.n}, acc_opts);
  const bool grad_out = write_grad && reduction != kReduceNone;
  at::Tensor grad = grad_out ? empty_like_output(o.f) : at::empty({0}, o.f.options());
  const BlockGrid grid = grid_of(o.n, o.m);
  std::vector<double> partial(size_t(grid.count()), 0.0);
  const double bs = diffusion_batch_scale(reduction, o.n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.f.scalar_type(), "diffusion_fwd", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* f = o.f.const_data_ptr<scalar_t>();
    const scalar_t* x = o.x0.const_data_ptr<scalar_t>();
    const scalar_t* e = o.e.const_data_ptr<scalar_t>();
    scalar_t* g = grad_out ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    dispatch_loss(loss_type, [&](auto L) {
      dispatch_inputs(o.use_sample, o.use_noise, [&](auto In) {
        grid.parallel([&](int64_t b, int64_t s, int64_t j0, int64_t len) {
          const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, s));
          const BlockCoef<acc_t> bk{acc_t(k.a), acc_t(k.b), acc_t(k.c), acc_t(huber_c)};
          const int64_t off = s * o.m + j0;
          if (g != nullptr) {
            const acc_t gs = acc_t(diffusion_grad_factor(k.a, k.w, weight_of<acc_t>(o.weight, s), o.m, bs));
            partial[size_t(b)] = fwd_block<scalar_t, decltype(L)::value, decltype(In)::value, true>(
                f + off, x + off, e + off, g + off, len, bk, gs);
          } else {
            partial[size_t(b)] = fwd_block<scalar_t, decltype(L)::value, decltype(In)::value, false>(
                f + off, x + off, e + off, nullptr, len, bk, acc_t(0));
          }
        });
      });
    });

    acc_t* lp = loss.mutable_data_ptr<acc_t>();
    acc_t* sp = sample_loss.mutable_data_ptr<acc_t>();
    double total = 0.0;
    for (int64_t s = 0; s < o.n; ++s) {
      double sum = 0.0;
      for (int64_t j = 0; j < grid.per_sample; ++j) sum += partial[size_t(s * grid.per_sample + j)];
      const double mean = sum / double(o.m);  // m = 0: NaN, as torch's mean over nothing
      const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, s));
      sp[s] = acc_t(k.w * mean);
      const double wl = k.w * mean * weight_of<acc_t>(o.weight, s);
      if (reduction == kReduceNone) lp[s] = acc_t(wl);
      else total += wl;
    }
    if (reduction != kReduceNone) {
      lp[0] = acc_t(reduction == kReduceMean ? total / double(o.n) : total);
    }
  });
  return {loss, sample_loss, grad};
}

DiffusionBwdOut diffusion_bwd_cpu(const at::Tensor& grad_output, const at::Tensor& model_output,
                                  const at::Tensor& sample, const at::Tensor& noise,
                                  const at::Tensor& t, const std::optional<at::Tensor>& table,
                                  const std::optional<at::Tensor>& weight, int64_t schedule,
                                  int64_t prediction, int64_t weighting, int64_t loss_type,
                                  double snr_gamma, double huber_c, double sigma_data,
                                  int64_t reduction, bool model_output_grad, bool sample_grad,
                                  bool noise_grad) {
  const DiffusionLossParams p = params_of(schedule, prediction, weighting, loss_type, snr_gamma,
                                          huber_c, sigma_data);
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum,
              "fastgenloss::diffusion_bwd: unknown reduction code ", reduction);
  const DiffusionOperands o = diffusion_operands("fastgenloss::diffusion_bwd", model_output,
                                                 sample, noise, t, table, weight, p);
  const at::Tensor go = diffusion_grad_output(grad_output, o, reduction);
  const DiffusionValues vals = o.sched.values();
  auto out = [&](bool want) { return want ? empty_like_output(o.f) : at::empty({0}, o.f.options()); };
  at::Tensor gf = out(model_output_grad), gx = out(sample_grad), ge = out(noise_grad);
  if (!(model_output_grad || sample_grad || noise_grad) || o.n == 0 || o.m == 0) {
    return {gf, gx, ge};
  }
  const BlockGrid grid = grid_of(o.n, o.m);
  const bool per_sample = reduction == kReduceNone;
  const double bs = per_sample ? 1.0 : diffusion_batch_scale(reduction, o.n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.f.scalar_type(), "diffusion_bwd", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* f = o.f.const_data_ptr<scalar_t>();
    const scalar_t* x = o.x0.const_data_ptr<scalar_t>();
    const scalar_t* e = o.e.const_data_ptr<scalar_t>();
    const acc_t* gop = go.const_data_ptr<acc_t>();
    scalar_t* const dsts[3] = {model_output_grad ? gf.mutable_data_ptr<scalar_t>() : nullptr,
                               sample_grad ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                               noise_grad ? ge.mutable_data_ptr<scalar_t>() : nullptr};
    dispatch_loss(loss_type, [&](auto L) {
      dispatch_inputs(o.use_sample, o.use_noise, [&](auto In) {
        grid.parallel([&](int64_t, int64_t s, int64_t j0, int64_t len) {
          const DiffusionCoef k = diffusion_coef(p, diffusion_value(vals, s));
          const BlockCoef<acc_t> bk{acc_t(k.a), acc_t(k.b), acc_t(k.c), acc_t(huber_c)};
          const int64_t off = s * o.m + j0;
          acc_t d[kBlock];
          drho_block<scalar_t, decltype(L)::value, decltype(In)::value>(f + off, x + off, e + off,
                                                                         d, len, bk);
          const double uw = weight_of<acc_t>(o.weight, s);
          const double gn = per_sample ? double(gop[s]) : 1.0;
          const double coefs[3] = {k.a, k.b, k.c};
          for (int which = 0; which < 3; ++which) {
            if (dsts[which] == nullptr) continue;
            const acc_t factor = acc_t(gn * diffusion_grad_factor(coefs[which], k.w, uw, o.m, bs));
            scalar_t* dst = dsts[which] + off;
            if (per_sample) scale_block<scalar_t, true>(d, dst, len, factor, acc_t(0));
            else scale_block<scalar_t, false>(d, dst, len, factor, gop[0]);
          }
        });
      });
    });
  });
  return {gf, gx, ge};
}

namespace {

void mix_cpu(const at::Tensor& x, const at::Tensor* y, const ScheduleOperands& sched,
             int64_t kind, at::Tensor* out, at::Tensor* out2) {
  const int64_t n = x.size(0), m = n > 0 ? x.numel() / n : 0;
  if (n == 0 || m == 0) return;
  const DiffusionValues vals = sched.values();
  const BlockGrid grid = grid_of(n, m);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diffusion_mix", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y != nullptr ? y->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out != nullptr ? out->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* op2 = out2 != nullptr ? out2->mutable_data_ptr<scalar_t>() : nullptr;
    grid.parallel([&](int64_t, int64_t s, int64_t j0, int64_t len) {
      const MixCoef k = mix_coef(kind, diffusion_value(vals, s));
      const int64_t off = s * m + j0;
      mix_block<scalar_t>(xp + off, yp != nullptr ? yp + off : nullptr,
                          op != nullptr ? op + off : nullptr, op2 != nullptr ? op2 + off : nullptr,
                          len, acc_t(k.p), acc_t(k.q));
    });
  });
}

}  // namespace

at::Tensor diffusion_mix_cpu(const at::Tensor& sample, const at::Tensor& noise,
                             const at::Tensor& t, const std::optional<at::Tensor>& table,
                             int64_t kind) {
  const auto [x, y] = mix_operands("fastgenloss::diffusion_mix", sample, noise, kind);
  const ScheduleOperands sched = schedule_operands("fastgenloss::diffusion_mix", t, table,
                                                   mix_schedule(kind), x.size(0), x.device());
  at::Tensor out = empty_like_output(x);
  mix_cpu(x, &y, sched, kind, &out, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> diffusion_mix_bwd_cpu(const at::Tensor& grad,
                                                         const at::Tensor& t,
                                                         const std::optional<at::Tensor>& table,
                                                         int64_t kind, bool sample_grad,
                                                         bool noise_grad) {
  const at::Tensor g = std::get<0>(mix_operands("fastgenloss::diffusion_mix_bwd", grad, grad, kind));
  const ScheduleOperands sched = schedule_operands("fastgenloss::diffusion_mix_bwd", t, table,
                                                   mix_schedule(kind), g.size(0), g.device());
  at::Tensor gs = sample_grad ? empty_like_output(g) : at::empty({0}, g.options());
  at::Tensor gn = noise_grad ? empty_like_output(g) : at::empty({0}, g.options());
  mix_cpu(g, nullptr, sched, kind, sample_grad ? &gs : nullptr, noise_grad ? &gn : nullptr);
  return {gs, gn};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("diffusion_fwd", &fastgenloss::diffusion_fwd_cpu);
  m.impl("diffusion_bwd", &fastgenloss::diffusion_bwd_cpu);
  m.impl("diffusion_mix", &fastgenloss::diffusion_mix_cpu);
  m.impl("diffusion_mix_bwd", &fastgenloss::diffusion_mix_bwd_cpu);
}
