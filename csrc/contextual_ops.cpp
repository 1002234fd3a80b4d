// The contextual loss (Mechrez, Talmi, Zelnik-Manor, "The Contextual Loss for Image
// Transformation with Non-Aligned Data", ECCV 2018), as its common PyTorch port computes it:
//
//   mu = mean of y over batch and positions (per channel); x, y centred by mu and L2-normalized
//   over channels; S = x^T y (cosine similarities, [N, P, Q]); d = 1 - S;
//   d~_ij = d_ij / (min_j d_ij + 1e-5); w = exp((1 - d~) / h); cx_ij = w_ij / sum_j w_ij;
//   CX = mean_j max_i cx_ij;  loss = mean_n -log(CX_n + 1e-5).
//
// Autograd through that port keeps S, d, d~, w and cx (five [N, P, Q] tensors) from forward to
// backward. Here forward keeps nothing of that size: it builds w in place in one buffer beside S
// and reduces it; backward recomputes S (one GEMM) and runs the chain rule in place over one
// buffer, with the min over j and the max over i routed through their argmin / argmax (as
// torch.min / torch.max backward do). CompositeExplicitAutograd over ATen: the GEMMs and
// reductions run on the tensors' device; float16 / bfloat16 features are computed in float32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fastgenloss {
namespace {

constexpr const char* kOp = "fastgenloss::contextual";
constexpr double kDistEps = 1e-5;  // d / (min d + eps)
constexpr double kLogEps = 1e-5;   // -log(CX + eps)
constexpr double kNormEps = 1e-12;  // F.normalize's floor on the norm

at::Tensor as_ncl(const at::Tensor& f, const char* name) {
  TORCH_CHECK(f.dim() >= 3, kOp, ": ", name, " must be features [N, C, H, W] (or [N, C, L]), got ",
              f.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), kOp, ": ", name,
              " must be a floating tensor, got ", f.scalar_type());
  const auto acc = f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return (f.dim() == 3 ? f : f.flatten(2)).to(acc);
}

// The normalized features and what backward needs of the forward.
struct Forward {
  at::Tensor xn, yn;      // [N, C, P], [N, C, Q]
  at::Tensor nx, ny;      // norms before the floor [N, 1, P], [N, 1, Q]
  at::Tensor s;           // S [N, P, Q]
  at::Tensor inv;         // 1 / (min_j d_ij + eps) [N, P, 1]
  at::Tensor z;           // sum_j w_ij [N, P, 1]
  at::Tensor jmin;        // argmin_j d_ij [N, P]
  at::Tensor istar;       // argmax_i cx_ij [N, Q]
  at::Tensor cmax;        // max_i cx_ij [N, Q]
};

void check_pair(const at::Tensor& x, const at::Tensor& y, double h) {
  TORCH_CHECK(x.device() == y.device(), kOp, ": x is on ", x.device(), " but y is on ", y.device());
  TORCH_CHECK(x.dim() >= 3 && y.dim() == x.dim() && x.size(0) == y.size(0) && x.size(1) == y.size(1),
              kOp, ": x ", x.sizes(), " and y ", y.sizes(),
              " must be features with the same batch size and channels (their positions may differ)");
  TORCH_CHECK(h > 0.0 && std::isfinite(h), kOp, ": band_width must be finite and > 0, got ", h);
}

// w = exp(S inv / h + (1 - inv) / h): one pass writing a new buffer, one exponentiating it.
at::Tensor weights_of(const Forward& f, double h) {
  return at::addcmul(f.inv.neg().add_(1.0).div_(h), f.s, f.inv.div(h)).exp_();
}

Forward run_forward(const at::Tensor& x, const at::Tensor& y, double h, bool keep) {
  Forward f;
  const at::Tensor x3 = as_ncl(x, "x"), y3 = as_ncl(y, "y");
  const at::Tensor mu = y3.mean({0, 2}, /*keepdim=*/true);
  const at::Tensor xc = x3 - mu, yc = y3 - mu;
  f.nx = xc.norm(2, {1}, /*keepdim=*/true);
  f.ny = yc.norm(2, {1}, /*keepdim=*/true);
  f.xn = xc / f.nx.clamp_min(kNormEps);
  f.yn = yc / f.ny.clamp_min(kNormEps);
  f.s = at::bmm(f.xn.transpose(1, 2), f.yn);  // [N, P, Q]
  auto [smax, jmin] = f.s.max(2, /*keepdim=*/true);  // min_j d = 1 - max_j S
  f.jmin = jmin.squeeze(2);
  f.inv = (1.0 - smax).add_(kDistEps).reciprocal_();
  // w = exp((1 - d~) / h) = exp(S inv / h + (1 - inv) / h), built in one buffer
  at::Tensor w = weights_of(f, h);
  f.z = w.sum(2, /*keepdim=*/true);
  w.div_(f.z);  // cx
  auto [cmax, istar] = w.max(1);  // [N, Q]
  f.cmax = cmax;
  f.istar = istar;
  if (!keep) f.s = at::Tensor();
  return f;
}

at::Tensor loss_of(const at::Tensor& cmax) {
  const at::Tensor cx = cmax.mean(1);  // [N]
  return cx.add(kLogEps).log_().neg_().mean();
}

// sum_j a_ij b_ij over the last dim of two [N, P, Q] tensors, a block of rows at a time: the
// elementwise product never takes more than ~4 MB.
at::Tensor row_dot(const at::Tensor& a, const at::Tensor& b) {
  const int64_t p = a.size(1), q = a.size(2);
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(q, 1));
  if (rows >= p) return (a * b).sum(2, /*keepdim=*/true);
  std::vector<at::Tensor> parts;
  for (int64_t i = 0; i < p; i += rows) {
    const int64_t len = std::min(rows, p - i);
    parts.push_back((a.narrow(1, i, len) * b.narrow(1, i, len)).sum(2, /*keepdim=*/true));
  }
  return at::cat(parts, 1);
}

// d/dv of v / max(|v|, eps) applied to g, over the channel dim: (g - u (u.g)) / |v| when the norm
// is above the floor, g / eps below it.
at::Tensor normalize_backward(const at::Tensor& g, const at::Tensor& u, const at::Tensor& norm) {
  const at::Tensor dot = (u * g).sum(1, /*keepdim=*/true);
  const at::Tensor above = norm > kNormEps;
  return at::where(above, (g - u * dot) / norm.clamp_min(kNormEps), g / kNormEps);
}

}  // namespace

at::Tensor contextual_fwd_impl(const at::Tensor& x, const at::Tensor& y, double band_width) {
  check_pair(x, y, band_width);
  if (x.size(0) == 0) {  // mean over no samples: NaN, as torch
    return at::full({}, std::numeric_limits<double>::quiet_NaN(),
                    x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  }
  TORCH_CHECK(x.numel() > 0 && y.numel() > 0, kOp, ": x ", x.sizes(), " and y ", y.sizes(),
              " must have at least one channel and one position");
  return loss_of(run_forward(x, y, band_width, /*keep=*/false).cmax);
}

std::tuple<at::Tensor, at::Tensor> contextual_bwd_impl(const at::Tensor& grad_output,
                                                       const at::Tensor& x, const at::Tensor& y,
                                                       double band_width, bool x_grad,
                                                       bool y_grad) {
  check_pair(x, y, band_width);
  auto none = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, x.options()); };
  if (!(x_grad || y_grad) || x.size(0) == 0) {
    return {x_grad ? at::zeros_like(x) : none({}), y_grad ? at::zeros_like(y) : none({})};
  }
  const double h = band_width;
  Forward f = run_forward(x, y, h, /*keep=*/true);
  const int64_t n = f.s.size(0), q = f.s.size(2);
  const auto acc = f.s.scalar_type();
  // loss = mean_n -log(CX_n + eps), CX_n = mean_j c_nj: dL/dc_nj = g_n
  const at::Tensor cx = f.cmax.mean(1);
  const at::Tensor g = grad_output.to(acc).neg().div(cx.add(kLogEps)).div_(double(n * q));  // [N]
  // buffer B: w, recomputed from S
  at::Tensor b = weights_of(f, h);
  // cx_ij = w_ij / z_i; dL/dcx is g_n at (istar_j, j) only:
  //   dL/dw_ij = ([i = istar_j] g - r_i) / z_i,  r_i = sum_{j: istar_j = i} g cx_ij
  const at::Tensor idx = f.istar.unsqueeze(1);  // [N, 1, Q]
  const at::Tensor w_at = b.gather(1, idx);      // w_{istar_j, j} [N, 1, Q]
  const at::Tensor z_at = f.z.squeeze(2).gather(1, f.istar).unsqueeze(1);  // z_{istar_j} [N, 1, Q]
  const at::Tensor gq = g.view({n, 1, 1}).expand({n, 1, q});
  at::Tensor r = at::zeros({n, f.s.size(1)}, f.s.options());
  r.scatter_add_(1, f.istar, (gq * w_at / z_at).squeeze(1));  // sum of g cx at the maxima
  // dL/dd~ = -(w / h) dL/dw: dense part w r / (h z), sparse part -w g / (h z) at (istar_j, j)
  const at::Tensor sparse = -(w_at * gq / z_at) / h;
  b.mul_(r.unsqueeze(2)).div_(f.z).div_(h);
  b.scatter_add_(1, idx, sparse);
  // d~ = d inv: dL/dd = inv dL/dd~ (+ the min's share), dL/dinv_i = sum_j dL/dd~_ij d_ij
  // (sum_j b_ij (1 - S_ij), without a [N, P, Q] temporary)
  const at::Tensor dinv = b.sum(2, /*keepdim=*/true) - row_dot(b, f.s);  // [N, P, 1]
  b.mul_(f.inv);
  // inv = 1 / (min_j d + eps): dL/dmin_i = -inv_i^2 dL/dinv_i, routed to argmin j
  b.scatter_add_(2, f.jmin.unsqueeze(2), -(f.inv * f.inv) * dinv);
  // S = xn^T yn, d = 1 - S: dL/dS = -b
  at::Tensor gx, gy;
  const at::Tensor gxn = at::bmm(f.yn, b.transpose(1, 2)).neg_();  // [N, C, P]
  const at::Tensor gyn = at::bmm(f.xn, b).neg_();                   // [N, C, Q]
  const at::Tensor gxc = normalize_backward(gxn, f.xn, f.nx);
  const at::Tensor gyc = normalize_backward(gyn, f.yn, f.ny);
  if (x_grad) gx = gxc.to(x.scalar_type()).view(x.sizes());
  if (y_grad) {
    // xc = x - mu, yc = y - mu, mu = mean over (batch, positions) of y
    const double count = double(y.size(0)) * double(f.yn.size(2));
    const at::Tensor gmu = (gxc.sum({0, 2}, true) + gyc.sum({0, 2}, true)).neg_();
    gy = (gyc + gmu / count).to(y.scalar_type()).view(y.sizes());
  }
  return {none(gx), none(gy)};
}

}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CompositeExplicitAutograd, m) {
  m.impl("contextual_fwd", &fastgenloss::contextual_fwd_impl);
  m.impl("contextual_bwd", &fastgenloss::contextual_bwd_impl);
}
