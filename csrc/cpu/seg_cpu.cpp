// CPU kernels of the segmentation statistics (see fastgenloss/seg_math.h).
//
// Input logits are [N, C, M] (M positions, any 2D / 3D extent), labels [N, M] (multiclass) or
// a mask [N, C, M]. Each sample's positions are cut into fixed chunks of kChunk; a chunk's
// partial sums (float) depend only on its elements and are added per sample in chunk order in
// double, so the statistics have the same bits for any thread count. Multiclass positions are
// processed kTile at a time: the softmax over C runs down the class rows of a tile, every inner
// loop over the tile's contiguous positions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_common.h"
#include "fastgenloss/seg_math.h"

namespace fastgenloss {
namespace {

constexpr const char* kOp = "fastgenloss::seg_stats";
constexpr int64_t kChunk = 4096;  // positions per deterministic partial sum
constexpr int64_t kTile = 64;     // multiclass positions handled together
constexpr int kLanes = 8;         // independent partial sums in a reduction loop

// exp for the softmax: range reduction to r in [-ln2/2, ln2/2] (n = round(x log2 e) by the
// 1.5 * 2^23 trick, exact for |x log2 e| < 2^22), a degree-6 polynomial for e^r (Cephes'
// expf coefficients, relative error ~1e-7 = 1 ulp of float) and 2^n put into the exponent
// bits: branch-free, so the compiler vectorizes the loops that call it (std::exp is a scalar
// libm call). Inputs here are x - max <= 0; below -87 the result flushes to 0 as expf's
// underflow does (to within its denormal range).
static inline float exp_vec(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shift = 12582912.0f;  // 1.5 * 2^23
  const float fn = (x * 1.44269504088896341f + shift) - shift;
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  const int32_t e = (int32_t(fn) + 127) << 23;
  std::memcpy(&bits, &p, sizeof bits);
  bits += e - (127 << 23);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
static inline double exp_vec(double x) { return std::exp(x); }

struct BadLabel {
  std::atomic<bool> seen{false};
  std::atomic<int64_t> value{0};
  void report(int64_t v) {
    bool expected = false;
    if (seen.compare_exchange_strong(expected, true)) value.store(v);
  }
};

template <typename F>
void dispatch_label(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kByte: f(uint8_t{}); break;
    case at::kChar: f(int8_t{}); break;
    case at::kShort: f(int16_t{}); break;
    case at::kInt: f(int32_t{}); break;
    case at::kLong: f(int64_t{}); break;
    default: TORCH_CHECK(false, kOp, ": labels must be an integer tensor, got ", t);
  }
}

void check_args(const at::Tensor& input, const at::Tensor& target, int64_t mode) {
  TORCH_CHECK(mode == kSegBinary || mode == kSegMulticlass || mode == kSegMultilabel, kOp,
              ": unknown mode code ", mode);
  TORCH_CHECK(input.dim() == 3 && at::isFloatingType(input.scalar_type()), kOp,
              ": input must be floating logits [N, C, M], got ", input.sizes(), " ",
              input.scalar_type());
  if (mode == kSegMulticlass) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == input.size(0) &&
                    target.size(1) == input.size(2),
                kOp, ": labels must be [N, M] = [", input.size(0), ", ", input.size(2),
                "], got ", target.sizes());
    TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
                kOp, ": labels must be an integer tensor, got ", target.scalar_type());
  } else {
    TORCH_CHECK(target.sizes() == input.sizes(), kOp, ": target must match input ",
                input.sizes(), ", got ", target.sizes());
  }
}

// ---- multiclass: softmax over C -------------------------------------------------------------

// One tile of positions [m0, m0 + len) of sample b: the softmax (into e, [C, kTile]), and per
// position the label, whether it counts, log of the softmax denominator plus the max.
template <typename scalar_t, typename label_t>
struct Tile {
  using acc_t = acc_type_t<scalar_t>;
  std::vector<acc_t> e;  // [C][kTile] softmax probabilities
  acc_t lse[kTile];      // max + log(sum exp)
  int64_t lbl[kTile];
  bool valid[kTile];
  acc_t vf[kTile];       // valid as 1 / 0
  int32_t lbl32[kTile];  // the label where valid, else -1

  explicit Tile(int64_t c) : e(size_t(c) * kTile) {}

  void load(const scalar_t* x, const label_t* lab, int64_t c, int64_t m, int64_t m0, int64_t len,
            bool has_ignore, int64_t ignore, BadLabel& bad) {
    acc_t mx[kTile], s[kTile];
    for (int64_t t = 0; t < len; ++t) mx[t] = -std::numeric_limits<acc_t>::infinity();
    for (int64_t k = 0; k < c; ++k) {
      const scalar_t* row = x + k * m + m0;
      for (int64_t t = 0; t < len; ++t) {
        const acc_t v = acc_t(row[t]);
        mx[t] = v > mx[t] ? v : mx[t];
      }
    }
    for (int64_t t = 0; t < len; ++t) s[t] = 0.f;
    for (int64_t k = 0; k < c; ++k) {
      const scalar_t* row = x + k * m + m0;
      acc_t* ek = e.data() + k * kTile;
      for (int64_t t = 0; t < len; ++t) {
        ek[t] = exp_vec(acc_t(row[t]) - mx[t]);
        s[t] += ek[t];
      }
    }
    acc_t inv[kTile];
    for (int64_t t = 0; t < len; ++t) {
      inv[t] = acc_t(1) / s[t];
      lse[t] = mx[t] + std::log(s[t]);
    }
    for (int64_t k = 0; k < c; ++k) {
      acc_t* ek = e.data() + k * kTile;
      for (int64_t t = 0; t < len; ++t) ek[t] *= inv[t];
    }
    for (int64_t t = 0; t < len; ++t) {
      const int64_t l = int64_t(lab[m0 + t]);
      const bool ign = has_ignore && l == ignore;
      const bool bad_label = !ign && (l < 0 || l >= c);
      if (bad_label) bad.report(l);
      valid[t] = !ign && !bad_label;
      lbl[t] = valid[t] ? l : 0;
      vf[t] = valid[t] ? acc_t(1) : acc_t(0);
      lbl32[t] = valid[t] ? int32_t(l) : int32_t(-1);  // -1: matches no class
    }
  }
};

template <typename scalar_t, typename label_t>
void multiclass_fwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, std::vector<double>& part, int64_t nch,
                    BadLabel& bad) {
  using acc_t = acc_type_t<scalar_t>;
  // part: [N, nch, C, 4] (P, T, A, X)
  at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
    Tile<scalar_t, label_t> tile(c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nch, ch = task % nch;
      const scalar_t* xb = x + b * c * m;
      const label_t* lb = lab + b * m;
      double* acc = part.data() + task * c * 4;
      std::fill(acc, acc + c * 4, 0.0);
      const int64_t m1 = std::min(m, (ch + 1) * kChunk);
      for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
        const int64_t len = std::min(kTile, m1 - m0);
        tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad);
        for (int64_t k = 0; k < c; ++k) {
          const acc_t* ek = tile.e.data() + k * kTile;
          // kLanes independent partial sums: vectorizable without reassociation
          acc_t P[kLanes] = {}, T[kLanes] = {}, A[kLanes] = {};
          int64_t t = 0;
          for (; t + kLanes <= len; t += kLanes) {
            for (int q = 0; q < kLanes; ++q) {
              const acc_t pv = ek[t + q] * tile.vf[t + q];
              const acc_t tv = tile.lbl32[t + q] == int32_t(k) ? acc_t(1) : acc_t(0);
              P[q] += pv;
              T[q] += tv;
              A[q] += std::fabs(pv - tv);
            }
          }
          for (; t < len; ++t) {
            const acc_t pv = ek[t] * tile.vf[t];
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            P[0] += pv;
            T[0] += tv;
            A[0] += std::fabs(pv - tv);
          }
          for (int q = 0; q < kLanes; ++q) {
            acc[k * 4 + 0] += P[q];
            acc[k * 4 + 1] += T[q];
            acc[k * 4 + 2] += A[q];
          }
        }
        for (int64_t t = 0; t < len; ++t) {
          if (!tile.valid[t]) continue;
          const int64_t l = tile.lbl[t];
          acc[l * 4 + 3] += tile.lse[t] - acc_t(xb[l * m + m0 + t]);  // -log softmax_l
        }
      }
    }
  });
}

template <typename scalar_t, typename label_t, typename acc_t = acc_type_t<scalar_t>>
void multiclass_bwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, const acc_t* gs, const acc_t* gx,
                    scalar_t* out, BadLabel& bad) {
  // gs: [N, C, 3] (dL/dP, dL/dT, dL/dA); gx: [N, C] (dL/dX)
  const int64_t nch = (m + kChunk - 1) / kChunk;
  at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
    Tile<scalar_t, label_t> tile(c);
    std::vector<acc_t> g(size_t(c) * kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nch, ch = task % nch;
      const scalar_t* xb = x + b * c * m;
      const label_t* lb = lab + b * m;
      scalar_t* ob = out + b * c * m;
      const acc_t* gsb = gs + b * c * 3;
      const acc_t* gxb = gx + b * c;
      const int64_t m1 = std::min(m, (ch + 1) * kChunk);
      for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
        const int64_t len = std::min(kTile, m1 - m0);
        tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad);
        acc_t dot[kTile], gce[kTile];
        for (int64_t t = 0; t < len; ++t) {
          dot[t] = acc_t(0);
          gce[t] = gxb[tile.lbl[t]] * tile.vf[t];
        }
        for (int64_t k = 0; k < c; ++k) {
          const acc_t* ek = tile.e.data() + k * kTile;
          acc_t* gk = g.data() + k * kTile;
          const acc_t gp = gsb[k * 3 + 0], ga = gsb[k * 3 + 2];
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            const acc_t u = ek[t] - tv;
            const acc_t v = gp + ga * (u > acc_t(0) ? acc_t(1) : (u < acc_t(0) ? acc_t(-1) : acc_t(0)));
            gk[t] = v;
            dot[t] += ek[t] * v;
          }
        }
        for (int64_t k = 0; k < c; ++k) {
          const acc_t* ek = tile.e.data() + k * kTile;
          const acc_t* gk = g.data() + k * kTile;
          scalar_t* orow = ob + k * m + m0;
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            // ignored positions: vf = 0 zeroes both parts (gce already carries vf)
            const acc_t d = ek[t] * (gk[t] - dot[t]) * tile.vf[t] + gce[t] * (ek[t] - tv);
            orow[t] = scalar_t(d);
          }
        }
      }
    }
  });
}

// ---- binary / multilabel: sigmoid per element -----------------------------------------------

template <typename scalar_t, typename target_t>
void sigmoid_fwd(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, std::vector<double>& part, int64_t nch) {
  using acc_t = acc_type_t<scalar_t>;
  // part: [rows, nch, 4]
  at::parallel_for(0, rows * nch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / nch, ch = task % nch;
      const int64_t m0 = ch * kChunk, m1 = std::min(m, m0 + kChunk);
      const scalar_t* xr = x + r * m;
      const target_t* tr = tg + r * m;
      acc_t P = 0.f, T = 0.f, A = 0.f, X = 0.f;
      for (int64_t j = m0; j < m1; ++j) {
        const acc_t t = acc_t(tr[j]);
        if (has_ignore && double(tr[j]) == ignore) continue;
        const acc_t v = acc_t(xr[j]);
        const acc_t p = seg_sigmoid(v);
        P += p;
        T += t;
        A += std::fabs(p - t);
        X += seg_bce_with_logits(v, t);
      }
      double* acc = part.data() + task * 4;
      acc[0] = P;
      acc[1] = T;
      acc[2] = A;
      acc[3] = X;
    }
  });
}

template <typename scalar_t, typename target_t, typename acc_t = acc_type_t<scalar_t>>
void sigmoid_bwd(const scalar_t* x, const target_t* tg, int64_t rows, int64_t m, bool has_ignore,
                 double ignore, const acc_t* gs, const acc_t* gx, scalar_t* out) {
  const int64_t nch = (m + kChunk - 1) / kChunk;
  at::parallel_for(0, rows * nch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / nch, ch = task % nch;
      const int64_t m0 = ch * kChunk, m1 = std::min(m, m0 + kChunk);
      const acc_t gp = gs[r * 3 + 0], ga = gs[r * 3 + 2], gce = gx[r];
      for (int64_t j = m0; j < m1; ++j) {
        const bool ign = has_ignore && double(tg[r * m + j]) == ignore;
        const acc_t t = acc_t(tg[r * m + j]);
        const acc_t p = seg_sigmoid(acc_t(x[r * m + j]));
        out[r * m + j] = scalar_t(ign ? 0.f : seg_sigmoid_grad(p, t, gp, ga, gce));
      }
    }
  });
}

void raise_bad_label(const BadLabel& bad, int64_t c, bool has_ignore, int64_t ignore) {
  if (!bad.seen.load()) return;
  if (has_ignore) {
    TORCH_CHECK(false, kOp, ": labels must be in [0, ", c, ") or ignore_index (", ignore,
                "), got ", bad.value.load());
  }
  TORCH_CHECK(false, kOp, ": labels must be in [0, ", c, "), got ", bad.value.load(),
              " (pass ignore_index for labels to leave out)");
}

}  // namespace

// -> (stats [N, C, 3] = (P, T, A), xent [N, C]), float32 (float64 for double input)
std::tuple<at::Tensor, at::Tensor> seg_stats_cpu(const at::Tensor& input_, const at::Tensor& target_,
                                                 int64_t mode, bool has_ignore,
                                                 int64_t ignore_index) {
  check_args(input_, target_, mode);
  const at::Tensor input = input_.contiguous(), target = target_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), m = input.size(2);
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t nch = std::max<int64_t>(1, (m + kChunk - 1) / kChunk);
  const int64_t rows = mode == kSegMulticlass ? n : n * c;
  std::vector<double> part(size_t(rows) * nch * (mode == kSegMulticlass ? c : 1) * 4, 0.f);
  BadLabel bad;
  if (m > 0 && n > 0 && c > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "seg_stats", [&] {
      using scalar_t_ = scalar_t;
      if (mode == kSegMulticlass) {
        dispatch_label(target.scalar_type(), [&](auto tag) {
          using label_t = decltype(tag);
          multiclass_fwd<scalar_t_, label_t>(input.data_ptr<scalar_t_>(), target.data_ptr<label_t>(),
                                             n, c, m, has_ignore, ignore_index, part, nch, bad);
        });
      } else {
        const at::Tensor t = target.scalar_type() == input.scalar_type() ? target : target.to(input.scalar_type());
        sigmoid_fwd<scalar_t_, scalar_t_>(input.data_ptr<scalar_t_>(), t.data_ptr<scalar_t_>(), rows,
                                          m, has_ignore, double(ignore_index), part, nch);
      }
    });
  }
  raise_bad_label(bad, c, has_ignore, ignore_index);
  // chunk partials, added per (sample, class) in chunk order, in double
  at::Tensor stats = at::zeros({n, c, 3}, at::kDouble), xent = at::zeros({n, c}, at::kDouble);
  double* sp = stats.data_ptr<double>();
  double* xp = xent.data_ptr<double>();
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t k = 0; k < c; ++k) {
      double s[4] = {0, 0, 0, 0};
      for (int64_t ch = 0; ch < nch && m > 0; ++ch) {
        const double* a = mode == kSegMulticlass ? part.data() + ((b * nch + ch) * c + k) * 4
                                                : part.data() + ((b * c + k) * nch + ch) * 4;
        for (int q = 0; q < 4; ++q) s[q] += a[q];
      }
      for (int q = 0; q < 3; ++q) sp[(b * c + k) * 3 + q] = s[q];
      xp[b * c + k] = s[3];
    }
  }
  return {stats.to(acc), xent.to(acc)};
}

at::Tensor seg_stats_bwd_cpu(const at::Tensor& grad_stats, const at::Tensor& grad_xent,
                             const at::Tensor& input_, const at::Tensor& target_, int64_t mode,
                             bool has_ignore, int64_t ignore_index) {
  check_args(input_, target_, mode);
  const at::Tensor input = input_.contiguous(), target = target_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), m = input.size(2);
  TORCH_CHECK(grad_stats.sizes() == at::IntArrayRef({n, c, 3}) &&
                  grad_xent.sizes() == at::IntArrayRef({n, c}),
              kOp, ": gradients must be [N, C, 3] and [N, C], got ", grad_stats.sizes(), " and ",
              grad_xent.sizes());
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor gs = grad_stats.to(acc).contiguous();
  const at::Tensor gx = grad_xent.to(acc).contiguous();
  at::Tensor out = at::empty_like(input);
  BadLabel bad;
  if (input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "seg_stats_bwd", [&] {
      using scalar_t_ = scalar_t;
      if (mode == kSegMulticlass) {
        dispatch_label(target.scalar_type(), [&](auto tag) {
          using label_t = decltype(tag);
          multiclass_bwd<scalar_t_, label_t>(input.data_ptr<scalar_t_>(), target.data_ptr<label_t>(),
                                             n, c, m, has_ignore, ignore_index, gs.data_ptr<acc_type_t<scalar_t_>>(),
                                             gx.data_ptr<acc_type_t<scalar_t_>>(), out.data_ptr<scalar_t_>(), bad);
        });
      } else {
        const at::Tensor t = target.scalar_type() == input.scalar_type() ? target : target.to(input.scalar_type());
        sigmoid_bwd<scalar_t_, scalar_t_>(input.data_ptr<scalar_t_>(), t.data_ptr<scalar_t_>(), n * c,
                                          m, has_ignore, double(ignore_index), gs.data_ptr<acc_type_t<scalar_t_>>(),
                                          gx.data_ptr<acc_type_t<scalar_t_>>(), out.data_ptr<scalar_t_>());
      }
    });
  }
  raise_bad_label(bad, c, has_ignore, ignore_index);
  return out;
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("seg_stats", &fastgenloss::seg_stats_cpu);
  m.impl("seg_stats_bwd", &fastgenloss::seg_stats_bwd_cpu);
}
