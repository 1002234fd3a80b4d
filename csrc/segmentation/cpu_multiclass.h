// The CPU statistics kernels of multiclass segmentation (softmax over C), forward and backward
// (cpu_kernels.h's stats_fwd / stats_bwd call them).
#pragma once

#include "segmentation/cpu_vector.h"

namespace fastgenloss {
namespace seg_cpu {
namespace {
// ---- multiclass: softmax over C -------------------------------------------------------------

// One tile of positions [m0, m0 + len) of sample b: its logits gathered into raw ([C, kTile],
// from class rows of [N, C, M] memory, or transposed from the [N, M, C] memory of channels_last
// logits), the softmax (into e, [C, kTile]), and per position the label, whether it counts, log
// of the softmax denominator plus the max.
template <typename scalar_t, typename label_t>
struct Tile {
  using acc_t = acc_type_t<scalar_t>;
  std::vector<acc_t> raw;  // [C][kTile] logits
  std::vector<acc_t> e;  // [C][kTile] softmax probabilities
  acc_t lse[kTile];      // max + log(sum exp)
  int64_t lbl[kTile];
  bool valid[kTile];
  acc_t vf[kTile];       // valid as 1 / 0
  int32_t lbl32[kTile];  // the label where valid, else -1

  explicit Tile(int64_t c) : raw(size_t(c) * kTile), e(size_t(c) * kTile) {}

  // the logits of class k at the tile's positions: in place for float / double [N, C, M]
  // memory, else gathered (converted, or transposed from [N, M, C]) into raw
  const acc_t* base = nullptr;
  int64_t kstride = kTile;
  FGL_CPU_INLINE const acc_t* logits(int64_t k) const { return base + k * kstride; }

  FGL_CPU_INLINE void load(const scalar_t* x, const label_t* lab, int64_t c, int64_t m, int64_t m0, int64_t len,
            bool has_ignore, int64_t ignore, BadLabel& bad, bool nhwc) {
    if (nhwc) {
      base = raw.data();
      kstride = kTile;
      for (int64_t t = 0; t < len; ++t) {
        const scalar_t* px = x + (m0 + t) * c;
        for (int64_t k = 0; k < c; ++k) raw[k * kTile + t] = acc_t(px[k]);
      }
    } else {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        base = x + m0;
        kstride = m;
      } else {
        base = raw.data();
        kstride = kTile;
        for (int64_t k = 0; k < c; ++k) {
          const scalar_t* row = x + k * m + m0;
          acc_t* rk = raw.data() + k * kTile;
          for (int64_t t = 0; t < len; ++t) rk[t] = acc_t(row[t]);
        }
      }
    }
    acc_t mx[kTile], s[kTile];
    for (int64_t t = 0; t < len; ++t) mx[t] = -std::numeric_limits<acc_t>::infinity();
    for (int64_t k = 0; k < c; ++k) {
      const acc_t* row = logits(k);
      for (int64_t t = 0; t < len; ++t) {
        const acc_t v = row[t];
        mx[t] = v > mx[t] ? v : mx[t];
      }
    }
    for (int64_t t = 0; t < len; ++t) s[t] = 0.f;
    for (int64_t k = 0; k < c; ++k) {
      const acc_t* row = logits(k);
      acc_t* ek = e.data() + k * kTile;
      for (int64_t t = 0; t < len; ++t) {
        ek[t] = exp_vec(row[t] - mx[t]);
        s[t] += ek[t];
      }
    }
    acc_t inv[kTile];
    for (int64_t t = 0; t < len; ++t) {
      inv[t] = acc_t(1) / s[t];
      lse[t] = mx[t] + log_ge1(s[t]);
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

// Tasks [begin, end) of multiclass_fwd: compiled for AVX2 and the baseline (FGL_CPU_MULTIVERSION),
// one function per focal variant FGI (with_focal_variant).
template <int FGI, typename scalar_t, typename label_t>
FGL_CPU_MULTIVERSION void multiclass_fwd_range(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, std::vector<double>& part, int64_t nch,
                    BadLabel& bad, const Focal& focal, bool nhwc, double label_smoothing,
                    int64_t begin, int64_t end) {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t ls = acc_t(label_smoothing), inv_c = acc_t(1) / acc_t(c);
  // part: [N, nch, C, W] (P, T, A, X[, F, K])
  const int64_t W = focal.part();
  const acc_t fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  Tile<scalar_t, label_t> tile(c);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / nch, ch = task % nch;
    const scalar_t* xb = x + b * c * m;
    const label_t* lb = lab + b * m;
    double* acc = part.data() + task * c * W;
    std::fill(acc, acc + c * W, 0.0);
    const int64_t m1 = std::min(m, (ch + 1) * kChunk);
    for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
      const int64_t len = std::min(kTile, m1 - m0);
      tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad, nhwc);
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        // kLanes independent partial sums (one lane vector each): no reassociation
        using V = typename LaneVec<acc_t>::V;
        using M = typename LaneVec<acc_t>::M;
        V P{}, T{}, A{};
        const M kl = M{} + int32_t(k);
        int64_t t = 0;
        for (; t + kLanes <= len; t += kLanes) {
          const V pv = load_lanes<V>(ek + t) * load_lanes<V>(tile.vf + t);
          const M lv = __builtin_convertvector(load_lanes<Int32x8>(tile.lbl32 + t), M);
          const V tv = lv == kl ? V{} + acc_t(1) : V{};
          P += pv;
          T += tv;
          A += abs_lanes<acc_t>(pv - tv);
        }
        for (; t < len; ++t) {
          const acc_t pv = ek[t] * tile.vf[t];
          const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
          P[0] += pv;
          T[0] += tv;
          A[0] += std::fabs(pv - tv);
        }
        for (int q = 0; q < kLanes; ++q) {
          acc[k * W + 0] += P[q];
          acc[k * W + 1] += T[q];
          acc[k * W + 2] += A[q];
        }
        if constexpr (FGI != 0) {  // one-vs-rest sigmoid focal term of class k
          const acc_t* row = tile.logits(k);
          acc_t fk[kTile];
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            acc_t unused;
            fk[t] = tile.vf[t] * focal_elem_hard<FGI>(acc_t(row[t]), tv, fg, fa, &unused);
          }
          V Fs{}, Ks{};
          int64_t t = 0;
          for (; t + kLanes <= len; t += kLanes) {
            Fs += load_lanes<V>(fk + t);
            Ks += load_lanes<V>(tile.vf + t);
          }
          for (; t < len; ++t) {
            Fs[0] += fk[t];
            Ks[0] += tile.vf[t];
          }
          for (int q = 0; q < kLanes; ++q) {
            acc[k * W + 4] += Fs[q];
            acc[k * W + 5] += Ks[q];
          }
        }
      }
      if (ls == acc_t(0)) {
        for (int64_t t = 0; t < len; ++t) {
          if (!tile.valid[t]) continue;
          const int64_t l = tile.lbl[t];
          acc[l * W + 3] += tile.lse[t] - tile.logits(l)[t];  // -log softmax_l
        }
      } else {
        // smoothed: (1 - ls)(-log softmax_l) + ls mean_k(-log softmax_k), mean_k(-log softmax_k)
        // = lse - mean_k x_k, credited to the label's class as the unsmoothed term is
        acc_t xs[kTile];
        for (int64_t t = 0; t < len; ++t) xs[t] = acc_t(0);
        for (int64_t k = 0; k < c; ++k) {
          const acc_t* row = tile.logits(k);
          for (int64_t t = 0; t < len; ++t) xs[t] += row[t];
        }
        for (int64_t t = 0; t < len; ++t) {
          if (!tile.valid[t]) continue;
          const int64_t l = tile.lbl[t];
          acc[l * W + 3] += (acc_t(1) - ls) * (tile.lse[t] - tile.logits(l)[t]) +
                            ls * (tile.lse[t] - xs[t] * inv_c);
        }
      }
    }
  }
}

template <typename scalar_t, typename label_t>
void multiclass_fwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, std::vector<double>& part, int64_t nch,
                    BadLabel& bad, const Focal& focal, bool nhwc, double label_smoothing) {
  with_focal_variant(focal, [&](auto fgi) {
    at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
      multiclass_fwd_range<decltype(fgi)::value, scalar_t, label_t>(
          x, lab, n, c, m, has_ignore, ignore, part, nch, bad, focal, nhwc, label_smoothing,
          begin, end);
    });
  });
}

// Tasks [begin, end) of multiclass_bwd: compiled for AVX2 and the baseline (FGL_CPU_MULTIVERSION),
// one function per focal variant FGI (with_focal_variant).
template <int FGI, typename scalar_t, typename label_t, typename acc_t = acc_type_t<scalar_t>>
FGL_CPU_MULTIVERSION void multiclass_bwd_range(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, const acc_t* gs, const acc_t* gx,
                    scalar_t* out, BadLabel& bad, const Focal& focal, bool nhwc,
                    double label_smoothing, int64_t begin, int64_t end) {
  // gs: [N, C, S] (dL/dP, dL/dT, dL/dA[, dL/dF, dL/dK]); gx: [N, C] (dL/dX)
  // the cross-entropy's gradient is p - the smoothed target (1 - ls) t + ls / C (exactly t at
  // ls = 0)
  const acc_t keep1 = acc_t(1 - label_smoothing), lsc = acc_t(label_smoothing / double(c));
  const int64_t S = focal.stats();
  const acc_t fg = acc_t(focal.gamma), fa = acc_t(focal.alpha);
  const int64_t nch = (m + kChunk - 1) / kChunk;
  Tile<scalar_t, label_t> tile(c);
  std::vector<acc_t> g(size_t(c) * kTile);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / nch, ch = task % nch;
    const scalar_t* xb = x + b * c * m;
    const label_t* lb = lab + b * m;
    scalar_t* ob = out + b * c * m;
    const acc_t* gsb = gs + b * c * S;
    const acc_t* gxb = gx + b * c;
    const int64_t m1 = std::min(m, (ch + 1) * kChunk);
    for (int64_t m0 = ch * kChunk; m0 < m1; m0 += kTile) {
      const int64_t len = std::min(kTile, m1 - m0);
      tile.load(xb, lb, c, m, m0, len, has_ignore, ignore, bad, nhwc);
      acc_t dot[kTile], gce[kTile];
      for (int64_t t = 0; t < len; ++t) {
        dot[t] = acc_t(0);
        gce[t] = gxb[tile.lbl[t]] * tile.vf[t];
      }
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        acc_t* gk = g.data() + k * kTile;
        const acc_t gp = gsb[k * S + 0], ga = gsb[k * S + 2];
        for (int64_t t = 0; t < len; ++t) {
          const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
          const acc_t u = ek[t] - tv;
          const acc_t v = gp + ga * (u > acc_t(0) ? acc_t(1) : (u < acc_t(0) ? acc_t(-1) : acc_t(0)));
          gk[t] = v;
          dot[t] += ek[t] * v;
        }
      }
      // the gradient of class k's row: into the output's row (NCHW), or back into g (NHWC:
      // written out transposed below)
      for (int64_t k = 0; k < c; ++k) {
        const acc_t* ek = tile.e.data() + k * kTile;
        acc_t* gk = g.data() + k * kTile;
        scalar_t* orow = ob + k * m + m0;
        if constexpr (FGI == 0) {
          auto grad = [&](int64_t t) __attribute__((always_inline)) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            // ignored positions: vf = 0 zeroes both parts (gce already carries vf)
            return ek[t] * (gk[t] - dot[t]) * tile.vf[t] + gce[t] * (ek[t] - (tv * keep1 + lsc));
          };
          if (!nhwc) {
            for (int64_t t = 0; t < len; ++t) orow[t] = scalar_t(grad(t));
          } else {
            for (int64_t t = 0; t < len; ++t) gk[t] = grad(t);
          }
        } else {  // plus the one-vs-rest focal term's gradient
          const acc_t gf = gsb[k * S + 3];
          const acc_t* row = tile.logits(k);
          // the focal derivative in a loop of its own: fused with the softmax part, the
          // polynomials' constants and the loop's operands outgrew the 16 vector registers
          acc_t df[kTile];
          for (int64_t t = 0; t < len; ++t) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            focal_elem_hard<FGI>(row[t], tv, fg, fa, &df[t]);
          }
          auto grad = [&](int64_t t) __attribute__((always_inline)) {
            const acc_t tv = tile.lbl32[t] == int32_t(k) ? acc_t(1) : acc_t(0);
            return (ek[t] * (gk[t] - dot[t]) + gf * df[t]) * tile.vf[t] +
                   gce[t] * (ek[t] - (tv * keep1 + lsc));
          };
          if (!nhwc) {
            for (int64_t t = 0; t < len; ++t) orow[t] = scalar_t(grad(t));
          } else {
            for (int64_t t = 0; t < len; ++t) gk[t] = grad(t);
          }
        }
      }
      if (nhwc) {
        for (int64_t t = 0; t < len; ++t) {
          scalar_t* po = ob + (m0 + t) * c;
          for (int64_t k = 0; k < c; ++k) po[k] = scalar_t(g[k * kTile + t]);
        }
      }
    }
  }
}

template <typename scalar_t, typename label_t, typename acc_t = acc_type_t<scalar_t>>
void multiclass_bwd(const scalar_t* x, const label_t* lab, int64_t n, int64_t c, int64_t m,
                    bool has_ignore, int64_t ignore, const acc_t* gs, const acc_t* gx,
                    scalar_t* out, BadLabel& bad, const Focal& focal, bool nhwc,
                    double label_smoothing) {
  const int64_t nch = (m + kChunk - 1) / kChunk;
  with_focal_variant(focal, [&](auto fgi) {
    at::parallel_for(0, n * nch, 1, [&](int64_t begin, int64_t end) {
      multiclass_bwd_range<decltype(fgi)::value, scalar_t, label_t>(
          x, lab, n, c, m, has_ignore, ignore, gs, gx, out, bad, focal, nhwc, label_smoothing,
          begin, end);
    });
  });
}

}  // namespace
}  // namespace seg_cpu
}  // namespace fastgenloss
