// The contextual loss (Mechrez, Talmi, Zelnik-Manor, "The Contextual Loss for Image
// Transformation with Non-Aligned Data", ECCV 2018), as its common PyTorch port computes it:
//
//   mu = mean of y over batch and positions (per channel); x, y centred by mu and L2-normalized
//   over channels; S = x^T y (cosine similarities, [N, P, Q]); d = 1 - S;
//   d~_ij = d_ij / (min_j d_ij + 1e-5); w = exp((1 - d~) / h); cx_ij = w_ij / sum_j w_ij;
//   CX = mean_j max_i cx_ij;  loss = mean_n -log(CX_n + 1e-5).
//
// Everything but the final max over i is local to a row i (an x position), so both passes walk
// S in blocks of rows (about 1M similarities each, `chunk_rows` to override): no [N, P, Q]
// tensor ever exists, where autograd through the port keeps five of them from forward to
// backward. Forward keeps the running max over rows of cx and its argmax ([N, Q]); backward
// recomputes each block of S with one GEMM and runs the chain rule on it in place, the min over
// j and the max over i routed through their argmin / argmax (as torch.min / torch.max backward
// do). CompositeExplicitAutograd over ATen: GEMMs and reductions run on the tensors' device;
// on the CPU the elementwise chain of a block runs in fused row loops below (other devices: the
// same chain as ATen ops); float16 / bfloat16 features are computed in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "core/tensor_utils.h"
#include "style/features.h"
#include "core/autograd.h"

namespace fastgenloss {
namespace {

constexpr const char* kOp = "fastgenloss::contextual";
constexpr double kDistEps = 1e-5;  // d / (min d + eps)
constexpr double kLogEps = 1e-5;   // -log(CX + eps)
constexpr double kNormEps = 1e-12;  // F.normalize's floor on the norm

// [N, C, P...] as [N, C, P] in the accumulation dtype.
at::Tensor acc_ncl(const at::Tensor& f, const char* name) {
  return features_ncl(f, kOp, name, "features [N, C, H, W] (or [N, C, L])").to(acc_scalar_type(f.scalar_type()));
}

void check_pair(const at::Tensor& x, const at::Tensor& y, double h, int64_t chunk_rows) {
  TORCH_CHECK(x.device() == y.device(), kOp, ": x is on ", x.device(), " but y is on ", y.device());
  TORCH_CHECK(x.dim() >= 3 && y.dim() == x.dim() && x.size(0) == y.size(0) && x.size(1) == y.size(1),
              kOp, ": x ", x.sizes(), " and y ", y.sizes(),
              " must be features with the same batch size and channels (their positions may differ)");
  TORCH_CHECK(h > 0.0 && std::isfinite(h), kOp, ": band_width must be finite and > 0, got ", h);
  TORCH_CHECK(chunk_rows >= 0, kOp, ": chunk_rows must be >= 0 (0: automatic), got ", chunk_rows);
}

// Centred, normalized features [N, C, P] / [N, C, Q] and their norms before the floor.
struct Normalized {
  at::Tensor xn, yn, nx, ny;
};

Normalized normalize(const at::Tensor& x, const at::Tensor& y) {
  Normalized r;
  const at::Tensor x3 = acc_ncl(x, "x"), y3 = acc_ncl(y, "y");
  const at::Tensor mu = y3.mean(at::IntArrayRef{0, 2}, /*keepdim=*/true);
  const at::Tensor xc = x3 - mu, yc = y3 - mu;
  // sqrt of the sum of squares: ATen's norm over the channel dim is a strided scalar loop
  // (about 5x slower)
  r.nx = xc.square().sum(1, /*keepdim=*/true).sqrt_();
  r.ny = yc.square().sum(1, /*keepdim=*/true).sqrt_();
  r.xn = xc / r.nx.clamp_min(kNormEps);
  r.yn = yc / r.ny.clamp_min(kNormEps);
  return r;
}

int64_t rows_per_chunk(int64_t p, int64_t q, int64_t chunk_rows) {
  if (chunk_rows > 0) return std::min(chunk_rows, std::max<int64_t>(p, 1));
  return std::max<int64_t>(1, std::min<int64_t>(p, (int64_t(1) << 20) / std::max<int64_t>(q, 1)));
}

// ---- CPU: the elementwise chain of a block in fused loops ------------------------------------
// (ATen's max over a dim with its index is a scalar loop, and the chain below is ~6 passes over
// the block as separate ops.)

// Rows of S per parallel task: about 16K similarities.
int64_t row_grain(int64_t q) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(q, 1)); }

// Independent partial results per row (max, sums), so the compiler can vectorize the loops
// without reassociating floating-point operations; merged in a fixed order (deterministic).
constexpr int kLanes = 8;

// Per row r of s ([rows, Q]): m = max_j s_rj and its first index; inv = 1 / (1 - m + eps); and
// dst_rj = (1 - inv) / h + s_rj inv / h (the exponent of w). dst may be s itself.
template <typename T>
void row_exponent_cpu(const at::Tensor& s, at::Tensor& dst, at::Tensor& inv, at::Tensor& jmin,
                      double h) {
  const int64_t q = s.size(-1), rows = s.numel() / std::max<int64_t>(q, 1);
  const T* sp = s.data_ptr<T>();
  T* dp = dst.data_ptr<T>();
  T* ip = inv.data_ptr<T>();
  int64_t* jp = jmin.data_ptr<int64_t>();
  const T th = T(h);
  at::parallel_for(0, rows, row_grain(q), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = sp + r * q;
      // the max (kLanes independent lanes: vectorizable as packed max), NaN seen or not
      T mx[kLanes];
      bool nan[kLanes];
      for (int k = 0; k < kLanes; ++k) {
        mx[k] = -std::numeric_limits<T>::infinity();
        nan[k] = false;
      }
      int64_t j = 0;
      for (; j + kLanes <= q; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) {
          const T v = row[j + k];
          mx[k] = v > mx[k] ? v : mx[k];
          nan[k] = nan[k] | (v != v);
        }
      }
      T m = -std::numeric_limits<T>::infinity();
      bool any_nan = false;
      for (int k = 0; k < kLanes; ++k) {
        m = mx[k] > m ? mx[k] : m;
        any_nan = any_nan || nan[k];
      }
      for (; j < q; ++j) {
        m = row[j] > m ? row[j] : m;
        any_nan = any_nan || row[j] != row[j];
      }
      // its first index (the first NaN if any, as torch.max): scanned kLanes at a time
      int64_t arg = 0;
      for (; arg + kLanes <= q; arg += kLanes) {
        bool hit = false;
        for (int k = 0; k < kLanes; ++k) {
          const T v = row[arg + k];
          hit = hit | (any_nan ? v != v : v == m);
        }
        if (hit) break;
      }
      while (arg < q && !(any_nan ? row[arg] != row[arg] : row[arg] == m)) ++arg;
      if (arg == q) arg = 0;  // every entry -inf (m stays -inf, found at 0)
      m = row[arg];
      const T iv = T(1) / (T(1) - m + T(kDistEps));
      ip[r] = iv;
      jp[r] = arg;
      // (1 - d~_ij) / h less the row's largest, (1 - d~ at the argmin of d) / h: (S_ij - max S) inv / h
      const T b = iv / th;
      T* out = dp + r * q;
      for (int64_t jj = 0; jj < q; ++jj) out[jj] = (row[jj] - m) * b;
    }
  });
}

// Forward: cx = w / z over the block's rows, folded into the running max over rows and its
// first argmax (cmax, istar: [N, Q]; rows before this block already folded in). NaN wins, as in
// torch.max.
template <typename T>
void fold_column_max_cpu(const at::Tensor& w, const at::Tensor& z, at::Tensor& cmax,
                         at::Tensor& istar, int64_t r0) {
  const int64_t n = w.size(0), len = w.size(1), q = w.size(2);
  constexpr int64_t kCols = 512;
  const int64_t tiles = (q + kCols - 1) / kCols;
  const T* wp = w.data_ptr<T>();
  const T* zp = z.data_ptr<T>();
  T* cp = cmax.data_ptr<T>();
  int64_t* ip = istar.data_ptr<int64_t>();
  at::parallel_for(0, n * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, j0 = (t % tiles) * kCols, j1 = std::min(q, j0 + kCols);
      T* c = cp + b * q;
      int64_t* idx = ip + b * q;
      for (int64_t i = 0; i < len; ++i) {
        const T zi = zp[b * len + i];
        const T* row = wp + (b * len + i) * q;
        for (int64_t j = j0; j < j1; ++j) {
          const T v = row[j] / zi;
          const bool take = v > c[j] || (v != v && c[j] == c[j]);
          c[j] = take ? v : c[j];
          idx[j] = take ? r0 + i : idx[j];
        }
      }
    }
  });
}

// Backward, per row: G_ij *= f_i.
template <typename T>
void scale_rows_cpu(at::Tensor& g, const at::Tensor& f) {
  const int64_t q = g.size(-1), rows = g.numel() / std::max<int64_t>(q, 1);
  T* gp = g.data_ptr<T>();
  const T* fp = f.data_ptr<T>();
  at::parallel_for(0, rows, row_grain(q), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = gp + r * q;
      const T fr = fp[r];
      for (int64_t j = 0; j < q; ++j) row[j] *= fr;
    }
  });
}

// Backward, per row: dinv = sum_j G_ij (1 - S_ij); G_ij *= inv_i; G[i, jmin_i] -= inv_i^2 dinv.
template <typename T>
void through_inv_cpu(at::Tensor& g, const at::Tensor& s, const at::Tensor& inv,
                     const at::Tensor& jmin) {
  const int64_t q = g.size(-1), rows = g.numel() / std::max<int64_t>(q, 1);
  T* gp = g.data_ptr<T>();
  const T* sp = s.data_ptr<T>();
  const T* ip = inv.data_ptr<T>();
  const int64_t* jp = jmin.data_ptr<int64_t>();
  at::parallel_for(0, rows, row_grain(q), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = gp + r * q;
      const T* srow = sp + r * q;
      T part[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= q; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) part[k] += row[j + k] * (T(1) - srow[j + k]);
      }
      double dinv = 0.0;
      for (int k = 0; k < kLanes; ++k) dinv += double(part[k]);
      for (; j < q; ++j) dinv += double(row[j] * (T(1) - srow[j]));
      const T iv = ip[r];
      for (int64_t j = 0; j < q; ++j) row[j] *= iv;
      row[jp[r]] -= iv * iv * T(dinv);
    }
  });
}

bool fused_cpu(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// One block of rows [r0, r0 + len): S, and from it w = exp((S - max_j S) inv / h) with
// inv = 1 / (1 - max_j S + eps), its row sums z and the argmax over j of S (argmin of d).
// That is the port's exp((1 - d~) / h) times exp(-(its row's largest exponent)), a per-row
// factor that cx = w / z cancels (and with it its gradient: softmax is shift-invariant), so
// w <= 1 and z >= 1: the port's exp overflows float32 once 1 / h passes 88 (band_width < 0.0114,
// e.g. 0.01: inf / inf = NaN), ours does not.
struct Block {
  at::Tensor s, w, inv, z, jmin;
};

Block block(const Normalized& nm, int64_t r0, int64_t len, double h, bool keep_s) {
  Block b;
  b.s = at::bmm(nm.xn.narrow(2, r0, len).transpose(1, 2), nm.yn);  // [N, len, Q]
  if (fused_cpu(b.s)) {
    const int64_t n = b.s.size(0);
    b.inv = at::empty({n, len, 1}, b.s.options());
    b.jmin = at::empty({n, len, 1}, b.s.options().dtype(at::kLong));
    b.w = keep_s ? at::empty_like(b.s) : b.s;
    AT_DISPATCH_FLOATING_TYPES(b.s.scalar_type(), "contextual_row_exponent", [&] {
      row_exponent_cpu<scalar_t>(b.s, b.w, b.inv, b.jmin, h);
    });
    b.w.exp_();
  } else {
    auto [smax, jmin] = b.s.max(2, /*keepdim=*/true);
    b.jmin = jmin;
    b.inv = (1.0 - smax).add_(kDistEps).reciprocal_();
    b.w = at::sub(b.s, smax).mul_(b.inv.div(h)).exp_();
  }
  b.z = b.w.sum(2, /*keepdim=*/true);
  if (!keep_s) b.s = at::Tensor();
  return b;
}

at::Tensor loss_of(const at::Tensor& cmax) {
  return cmax.mean(1).add(kLogEps).log_().neg_().mean();
}

// d/dv of v / max(|v|, eps) applied to g, over the channel dim: (g - u (u.g)) / |v| when the norm
// is above the floor, g / eps below it.
at::Tensor normalize_backward(const at::Tensor& g, const at::Tensor& u, const at::Tensor& norm) {
  const at::Tensor dot = (u * g).sum(1, /*keepdim=*/true);
  const at::Tensor above = norm > kNormEps;
  return at::where(above, (g - u * dot) / norm.clamp_min(kNormEps), g / kNormEps);
}

at::Tensor nan_loss(const at::Tensor& x) {
  return at::full({}, std::numeric_limits<double>::quiet_NaN(),
                  x.options().dtype(acc_scalar_type(x.scalar_type())));
}

}  // namespace

// -> (loss, cmax = max_i cx_ij [N, Q], istar = its argmax [N, Q])
std::tuple<at::Tensor, at::Tensor, at::Tensor> contextual_fwd_impl(const at::Tensor& x,
                                                                   const at::Tensor& y,
                                                                   double band_width,
                                                                   int64_t chunk_rows) {
  check_pair(x, y, band_width, chunk_rows);
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t n = x.size(0);
  if (n == 0) {  // mean over no samples: NaN, as torch
    return {nan_loss(x), at::empty({0, 0}, x.options().dtype(acc)),
            at::empty({0, 0}, x.options().dtype(at::kLong))};
  }
  TORCH_CHECK(x.numel() > 0 && y.numel() > 0, kOp, ": x ", x.sizes(), " and y ", y.sizes(),
              " must have at least one channel and one position");
  const Normalized nm = normalize(x, y);
  const int64_t p = nm.xn.size(2), q = nm.yn.size(2);
  const int64_t rows = rows_per_chunk(p, q, chunk_rows);
  at::Tensor cmax, istar;
  if (fused_cpu(nm.xn)) {
    cmax = at::full({n, q}, -std::numeric_limits<double>::infinity(), nm.xn.options());
    istar = at::zeros({n, q}, nm.xn.options().dtype(at::kLong));
  }
  for (int64_t r0 = 0; r0 < p; r0 += rows) {
    const int64_t len = std::min(rows, p - r0);
    Block b = block(nm, r0, len, band_width, /*keep_s=*/false);
    if (fused_cpu(b.w)) {
      AT_DISPATCH_FLOATING_TYPES(b.w.scalar_type(), "contextual_fold_column_max", [&] {
        fold_column_max_cpu<scalar_t>(b.w, b.z, cmax, istar, r0);
      });
      continue;
    }
    b.w.div_(b.z);  // cx
    auto [m, i] = b.w.max(1);  // over this block's rows: [N, Q]
    i.add_(r0);
    if (!cmax.defined()) {
      cmax = m;
      istar = i;
    } else {  // the first maximum wins on ties, as one max over all rows
      const at::Tensor better = m > cmax;
      cmax = at::where(better, m, cmax);
      istar = at::where(better, i, istar);
    }
  }
  return {loss_of(cmax), cmax, istar};
}

std::tuple<at::Tensor, at::Tensor> contextual_bwd_impl(const at::Tensor& grad_output,
                                                       const at::Tensor& x, const at::Tensor& y,
                                                       const at::Tensor& cmax,
                                                       const at::Tensor& istar, double band_width,
                                                       int64_t chunk_rows, bool x_grad,
                                                       bool y_grad) {
  check_pair(x, y, band_width, chunk_rows);
  auto none = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, x.options()); };
  if (!(x_grad || y_grad) || x.size(0) == 0) {
    return {x_grad ? at::zeros_like(x) : none({}), y_grad ? at::zeros_like(y) : none({})};
  }
  const double h = band_width;
  const Normalized nm = normalize(x, y);
  const int64_t n = nm.xn.size(0), p = nm.xn.size(2), q = nm.yn.size(2);
  TORCH_CHECK(cmax.dim() == 2 && cmax.size(0) == n && cmax.size(1) == q && istar.sizes() == cmax.sizes(),
              kOp, ": cmax/istar must be [", n, ", ", q, "] as the forward returned them, got ",
              cmax.sizes(), " and ", istar.sizes());
  const auto acc = nm.xn.scalar_type();
  // loss = mean_n -log(CX_n + eps), CX_n = mean_j c_nj: dL/dc_nj = g_n
  const at::Tensor g = grad_output.to(acc).neg().div(cmax.to(acc).mean(1).add(kLogEps))
                           .div_(double(n * q)).view({n, 1, 1});
  at::Tensor gxn = at::empty_like(nm.xn);   // [N, C, P], block by block
  at::Tensor gyn = at::zeros_like(nm.yn);   // [N, C, Q], summed over blocks
  const at::Tensor ist = istar.to(at::kLong).unsqueeze(1);  // [N, 1, Q]
  const int64_t rows = rows_per_chunk(p, q, chunk_rows);
  for (int64_t r0 = 0; r0 < p; r0 += rows) {
    const int64_t len = std::min(rows, p - r0);
    Block b = block(nm, r0, len, h, /*keep_s=*/true);
    // cx_ij = w_ij / z_i; dL/dcx is g at (istar_j, j) only (the positions j whose max is in
    // this block): dL/dw_ij = ([i = istar_j] g - r_i) / z_i, r_i = sum_{j: istar_j = i} g cx_ij
    const at::Tensor in_block = (ist >= r0).logical_and_(ist < r0 + len);  // [N, 1, Q]
    const at::Tensor local = (ist - r0).clamp_(0, len - 1);
    const at::Tensor w_at = b.w.gather(1, local);                          // [N, 1, Q]
    const at::Tensor z_at = b.z.squeeze(2).gather(1, local.squeeze(1)).unsqueeze(1);
    const at::Tensor gcx = at::where(in_block, g * w_at / z_at, at::zeros_like(w_at));  // g cx
    at::Tensor r = at::zeros({n, len}, b.w.options());
    r.scatter_add_(1, local.squeeze(1), gcx.squeeze(1));
    // dL/dd~ = -(w / h) dL/dw: dense part w r / (h z), sparse part -w g / (h z) at (istar_j, j)
    at::Tensor& G = b.w;
    if (fused_cpu(G)) {
      const at::Tensor f = r.unsqueeze(2).div(b.z).div_(h).contiguous();
      AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "contextual_scale_rows", [&] {
        scale_rows_cpu<scalar_t>(G, f);
      });
      G.scatter_add_(1, local, gcx.neg().div_(h));
      // the two steps below (d~ = d inv, and the min's share), one pass a row
      AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "contextual_through_inv", [&] {
        through_inv_cpu<scalar_t>(G, b.s, b.inv, b.jmin);
      });
    } else {
      G.mul_(r.unsqueeze(2)).div_(b.z).div_(h);
      G.scatter_add_(1, local, gcx.neg().div_(h));
      // d~ = d inv: dL/dd = inv dL/dd~ (+ the min's share), dL/dinv_i = sum_j dL/dd~_ij d_ij
      const at::Tensor dinv = G.sum(2, /*keepdim=*/true) - (G * b.s).sum(2, /*keepdim=*/true);
      G.mul_(b.inv);
      // inv = 1 / (min_j d + eps): dL/dmin_i = -inv_i^2 dL/dinv_i, routed to the argmin j
      G.scatter_add_(2, b.jmin, -(b.inv * b.inv) * dinv);
    }
    // S = xn^T yn, d = 1 - S: dL/dS = -G
    gxn.narrow(2, r0, len).copy_(at::bmm(nm.yn, G.transpose(1, 2)).neg_());
    gyn.sub_(at::bmm(nm.xn.narrow(2, r0, len), G));
  }
  const at::Tensor gxc = normalize_backward(gxn, nm.xn, nm.nx);
  const at::Tensor gyc = normalize_backward(gyn, nm.yn, nm.ny);
  at::Tensor gx, gy;
  if (x_grad) gx = gxc.to(x.scalar_type()).view(x.sizes());
  if (y_grad) {
    // xc = x - mu, yc = y - mu, mu = mean over (batch, positions) of y
    const double count = double(y.size(0)) * double(q);
    const at::Tensor gmu = (gxc.sum(at::IntArrayRef{0, 2}, true) + gyc.sum(at::IntArrayRef{0, 2}, true)).neg_();
    gy = (gyc + gmu / count).to(y.scalar_type()).view(y.sizes());
  }
  return {none(gx), none(gy)};
}

}  // namespace fastgenloss

TORCH_LIBRARY_FRAGMENT(fastgenloss, m) {
  // Contextual loss: x [N, C, P...], y [N, C, Q...] -> (loss in the
  // accumulation dtype, cmax = max over x positions of cx [N, Q], its argmax [N, Q] int64), S
  // walked in blocks of chunk_rows x positions (0: automatic, ~1M similarities a block); the
  // backward recomputes each block (no [N, P, Q] tensor ever exists) -> (grad_x, grad_y), [0]
  // when not asked for.
  m.def("contextual_fwd(Tensor x, Tensor y, float band_width, int chunk_rows) -> (Tensor, Tensor, Tensor)");
  m.def(
      "contextual_bwd(Tensor grad_output, Tensor x, Tensor y, Tensor cmax, Tensor istar, "
      "float band_width, int chunk_rows, bool x_grad, bool y_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgenloss, CompositeExplicitAutograd, m) {
  m.impl("contextual_fwd", &fastgenloss::contextual_fwd_impl);
  m.impl("contextual_bwd", &fastgenloss::contextual_bwd_impl);
}

// contextual_bwd is differentiated no further: a second derivative raises (core/autograd.h).
TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  m.impl("contextual_bwd",
         fastgenloss::first_order_only(
             "fastgenloss: second derivatives of the contextual loss are not implemented "
             "(differentiate once, without create_graph=True)"));
}
