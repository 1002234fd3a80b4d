// Gram matrices and the style loss, composed from ATen's batched GEMM (BLAS on the CPU, cuBLAS
// on CUDA) with every scale folded into a GEMM's alpha and every difference into its beta; on
// the CPU the Gram is computed by strips of its upper triangle (about half the multiply-adds,
// see gram_into):
//
//   gram:      G = s F F^T                       one GEMM (alpha = s: no overflow in half,
//                                                the product is scaled in float before it is
//                                                rounded)
//   style fwd: D = s F_x F_x^T - G_y             one GEMM (beta = -1 over G_y), then sum D^2
//   style bwd: dL/dF_x = 4 s c go D F_x          one GEMM (D is symmetric, so d(F F^T) needs
//                                                one product, not the two autograd runs)
//
// so fwd+bwd is two GEMMs where bmm + mse under autograd runs three, and nothing of size
// [N, C, C] beyond D is kept. Registered as CompositeExplicitAutograd: one implementation for
// every device (the GEMMs dispatch to the device's library).
//
// On CUDA, with the hand-written Gram kernel switched on (cuda.h), the Gram and the style
// forward run it instead: tensor cores, the upper triangle only, split over L, D and sum(D^2)
// in its epilogue; the backward GEMMs stay with cuBLAS.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "core/reduction.h"
#include "core/tensor_utils.h"
#include "style/cuda.h"
#include "style/features.h"
#include "core/autograd.h"

namespace fastgenloss {

namespace {

constexpr const char* kOp = "fastgenloss::style";


// [N, C, H, W] (any trailing dims) or [N, C, L] as [N, C, L].
at::Tensor as_ncl(const at::Tensor& f, const char* name) {
  return features_ncl(f, kOp, name, "[N, C, L] or [N, C, H, W, ...]");
}

// ATen's CPU GEMM in float16 / bfloat16 runs a generic loop (about 80x slower than float32 on
// a VGG-19 style loss), so on the CPU
// half-precision operands are multiplied in float32 and the result rounded once: the same
// float accumulation the GPU's tensor cores do, at float32 BLAS speed, for a transient float32
// copy of the features.
bool cpu_half(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

// The operand of a GEMM over `t` ([N, C, L]) at Gram scale `scale`: float32 for CPU half
// (above), and for float16 on any device when scale * L > 1 (normalize=False): such a Gram sums
// L products unnormalized and passes float16's 65504 long before the float32 loss does (L = 4096
// features of 4), so its product, the target's Gram and the backward's dL/dD run in float32.
at::Tensor gemm_operand(const at::Tensor& t, double scale) {
  const bool f16_sums = t.scalar_type() == at::kHalf && scale * double(t.size(-1)) > 1.0;
  return cpu_half(t) || f16_sums ? t.to(at::kFloat) : t;
}

// Rows of F per strip of the CPU's symmetric Gram (0: one full GEMM). Strips pay from C = 128
// on (docs/performance.md has the timings); below, a shape is bound by reading F, which the
// strips read once more, so one GEMM.
int64_t sym_block(int64_t c) {
  if (c < 128) return 0;
  return c <= 512 ? 64 : 128;
}

// out = scale * F F^T. On the CPU by strips of the upper triangle: strip i is rows [i, i + b)
// against rows [i, C) (one GEMM), mirrored below the diagonal, so the GEMMs do about half the
// multiply-adds of the full product (C (C + b) / 2 of C^2 entries). Each entry is the same dot
// product over L either way, so the two give the same values. Elsewhere one batched GEMM
// (cuBLAS). The GEMM applies the scale in its float epilogue (no overflow in half).
void gram_into(at::Tensor& out, const at::Tensor& f3, double scale) {
  const auto n = f3.size(0), c = f3.size(1);
  const int64_t b = f3.device().is_cpu() ? sym_block(c) : 0;
  if (b == 0 || b >= c) {
    at::baddbmm_out(out, out, f3, f3.transpose(1, 2), /*beta=*/0.0, /*alpha=*/scale);
    return;
  }
  for (int64_t i = 0; i < c; i += b) {
    const int64_t rows = std::min(b, c - i), cols = c - i;
    at::Tensor strip = at::empty({n, rows, cols}, f3.options());
    at::baddbmm_out(strip, strip, f3.narrow(1, i, rows), f3.narrow(1, i, cols).transpose(1, 2),
                    /*beta=*/0.0, /*alpha=*/scale);
    out.narrow(1, i, rows).narrow(2, i, cols).copy_(strip);
    if (cols > rows) {
      out.narrow(1, i + rows, cols - rows).narrow(2, i, rows)
          .copy_(strip.narrow(2, rows, cols - rows).transpose(1, 2));
    }
  }
}

// scale * F F^T in F's dtype.
at::Tensor gram_of(const at::Tensor& f3, double scale) {
#ifdef FGL_WITH_CUDA
  if (gram_cuda_takes(f3)) return gram_cuda(f3, scale);
#endif
  if (cpu_half(f3)) return gram_of(f3.to(at::kFloat), scale).to(f3.scalar_type());
  const auto n = f3.size(0), c = f3.size(1);
  at::Tensor out = at::empty({n, c, c}, f3.options());
  if (f3.size(2) == 0) return out.zero_();
  gram_into(out, f3, scale);
  return out;
}

// D = scale * F_x F_x^T - G_y, in the accumulation dtype, G_y broadcast over the batch.
at::Tensor style_diff(const at::Tensor& x3, const at::Tensor& gy, double scale) {
  const auto acc = acc_scalar_type(x3.scalar_type());
  const auto n = x3.size(0), c = x3.size(1);
  if (const at::Tensor xf = gemm_operand(x3, scale); xf.scalar_type() != x3.scalar_type()) {
    // float32 GEMM, difference taken in float before any rounding (see gemm_operand)
    return style_diff(xf, gy.to(at::kFloat), scale);
  }
  if (x3.device().is_cpu() && sym_block(c) > 0 && x3.scalar_type() == acc) {
    // the symmetric Gram, then the difference (a C^2 pass beside the C^2 L product)
    return gram_of(x3, scale).sub_(gy.to(acc));
  }
  if (x3.scalar_type() == acc && gy.scalar_type() == acc && x3.size(2) > 0) {
    // fused: the GEMM subtracts the target Gram in its epilogue (beta = -1)
    // a fresh copy: never write into the caller's target Gram (expand + contiguous may alias it)
    at::Tensor d = at::empty({n, c, c}, x3.options()).copy_(gy.expand({n, c, c}));
    return at::baddbmm_out(d, d, x3, x3.transpose(1, 2), /*beta=*/-1.0, /*alpha=*/scale);
  }
  // half precision: the GEMM runs in the data's dtype (float accumulation, scaled before it is
  // rounded), the difference in float
  return gram_of(x3, scale).to(acc).sub_(gy.to(acc));
}

// The target features as [N, C, L] in the input's dtype, checked against the input.
at::Tensor target_features(const at::Tensor& input3, const at::Tensor& target) {
  const at::Tensor t3 = as_ncl(target, "target");
  TORCH_CHECK(t3.size(0) == input3.size(0) && t3.size(1) == input3.size(1) &&
                  t3.size(2) == input3.size(2),
              kOp, ": target features ", target.sizes(), " must match input ", input3.sizes());
  return t3.to(input3.scalar_type());
}

at::Tensor target_gram(const at::Tensor& input3, const at::Tensor& target, bool target_is_gram,
                       double scale) {
  const auto n = input3.size(0), c = input3.size(1);
  if (target_is_gram) {
    TORCH_CHECK(at::isFloatingType(target.scalar_type()), kOp,
                ": target Gram must be a floating tensor, got ", target.scalar_type());
    const bool ok = (target.dim() == 2 && target.size(0) == c && target.size(1) == c) ||
                    (target.dim() == 3 && (target.size(0) == n || target.size(0) == 1) &&
                     target.size(1) == c && target.size(2) == c);
    TORCH_CHECK(ok, kOp, ": target Gram must be [", n, ", ", c, ", ", c, "], [1, ", c, ", ", c,
                "] or [", c, ", ", c, "], got ", target.sizes());
    return target.dim() == 2 ? target.unsqueeze(0) : target;
  }
  // in the GEMM's dtype: float32 for half on the CPU (not rounded back to half: an
  // unnormalized Gram can exceed float16's range where the float32 loss does not)
  return gram_of(gemm_operand(target_features(input3, target), scale), scale);
}

double reduce_scale(int64_t reduction, int64_t count) {
  return reduction == kReduceMean ? 1.0 / double(count > 0 ? count : 1) : 1.0;
}

}  // namespace

at::Tensor gram_impl(const at::Tensor& features, double scale) {
  return gram_of(as_ncl(features, "features"), scale);
}

// d/dF of <grad, s F F^T> = s (grad + grad^T) F
at::Tensor gram_bwd_impl(const at::Tensor& grad, const at::Tensor& features, double scale) {
  const at::Tensor f3 = as_ncl(features, "features");
  const at::Tensor f = gemm_operand(f3, scale);
  const at::Tensor sym = (grad + grad.transpose(1, 2)).to(f.scalar_type());
  at::Tensor out = empty_like_output(f, {}, at::MemoryFormat::Contiguous);
  at::baddbmm_out(out, out, sym, f, 0.0, scale);
  return out.to(f3.scalar_type()).view(features.sizes());
}

std::tuple<at::Tensor, at::Tensor> style_fwd_impl(const at::Tensor& input, const at::Tensor& target,
                                                  bool target_is_gram, double scale,
                                                  int64_t reduction) {
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum, kOp,
              ": unknown reduction code ", reduction);
  const at::Tensor x3 = as_ncl(input, "input");
  TORCH_CHECK(target.device() == input.device(), kOp, ": target is on ", target.device(),
              " but input is on ", input.device());
#ifdef FGL_WITH_CUDA
  if (gram_cuda_takes(x3)) {
    // one signed product over [F_x | F_y] (or F_x against the target Gram), D and sum(D^2) in
    // the kernel's epilogue
    at::Tensor d, sq;
    if (target_is_gram) {
      std::tie(d, sq) = style_diff_cuda(x3, at::Tensor(), target_gram(x3, target, true, scale), scale);
    } else {
      std::tie(d, sq) = style_diff_cuda(x3, target_features(x3, target), at::Tensor(), scale);
    }
    at::Tensor loss = reduction == kReduceNone ? d.square()
                      : reduction == kReduceMean ? sq.div(double(d.numel()))
                                                 : sq;
    return {loss, d};
  }
#endif
  const at::Tensor gy = target_gram(x3, target, target_is_gram, scale);
  const at::Tensor d = style_diff(x3, gy, scale);
  // The loss stays in the accumulation dtype (float32 for half features): squared Gram
  // differences overflow float16 long before the Grams themselves do.
  at::Tensor loss;
  if (reduction == kReduceNone) {
    loss = d.square();
  } else {
    loss = d.square().sum();
    if (reduction == kReduceMean) loss = loss.div(double(d.numel()));  // numel 0: NaN, as torch
  }
  return {loss, d};
}

std::tuple<at::Tensor, at::Tensor> style_bwd_impl(const at::Tensor& grad_output,
                                                  const at::Tensor& diff,
                                                  const at::Tensor& input,
                                                  const at::Tensor& target, bool target_is_gram,
                                                  double scale, int64_t reduction, bool input_grad,
                                                  bool target_grad) {
  const at::Tensor x3 = as_ncl(input, "input");
  const auto acc = diff.scalar_type();
  // dL/dD = 2 c go D, c = 1/numel(D) (mean) or 1; go per element for reduction none
  const double c = reduce_scale(reduction, diff.numel());
  at::Tensor dD;  // go * D (the constant 2c goes into the GEMMs' alpha)
  if (reduction == kReduceNone) {
    dD = grad_output.to(acc).mul(diff);
    dD = (dD + dD.transpose(1, 2)).mul_(0.5);  // symmetric part (go need not be symmetric)
  } else {
    dD = diff.mul(grad_output.to(acc));
  }
  at::Tensor gi, gt;
  // dL/dF = s (dL/dD + dL/dD^T) F = 4 s c (go D) F for symmetric go D
  auto feat_grad = [&](const at::Tensor& f_in, const at::Tensor& like, double sign) {
    const at::Tensor f = gemm_operand(f_in, scale);
    at::Tensor out = empty_like_output(f, {}, at::MemoryFormat::Contiguous);
    if (f.size(2) == 0 || f.size(1) == 0) return out.zero_().to(f_in.scalar_type()).view(like.sizes());
    at::baddbmm_out(out, out, dD.to(f.scalar_type()), f, 0.0, sign * 4.0 * scale * c);
    return out.to(f_in.scalar_type()).view(like.sizes());
  };
  if (input_grad) gi = feat_grad(x3, input, 1.0);
  if (target_grad) {
    if (target_is_gram) {
      // dL/dG_y = -2 c go D, summed over a broadcast batch
      at::Tensor g = dD.mul(-2.0 * c);
      if (reduction == kReduceNone) g = grad_output.to(acc).mul(diff).mul_(-2.0 * c);
      const bool bcast = target.dim() == 2 || target.size(0) != diff.size(0);
      if (bcast) g = g.sum(0, /*keepdim=*/target.dim() == 3);
      gt = g.to(target.scalar_type());
    } else {
      const at::Tensor t3 = as_ncl(target, "target").to(input.scalar_type());
      gt = feat_grad(t3, target, -1.0).to(target.scalar_type());
    }
  }
  auto none = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, input.options()); };
  return {none(gi), none(gt)};
}

}  // namespace fastgenloss

TORCH_LIBRARY_FRAGMENT(fastgenloss, m) {
  // gram = scale * F F^T ([N, C, L] or [N, C, H, W, ...] ->
  // [N, C, C]); style_fwd -> (loss, diff) with diff = G_x - G_y in the accumulation dtype (kept
  // for backward); style_bwd -> (grad_input, grad_target), each [0] when not asked for.
  m.def("gram(Tensor features, float scale) -> Tensor");
  m.def("gram_bwd(Tensor grad, Tensor features, float scale) -> Tensor");
  m.def(
      "style_fwd(Tensor input, Tensor target, bool target_is_gram, float scale, int reduction) "
      "-> (Tensor, Tensor)");
  m.def(
      "style_bwd(Tensor grad_output, Tensor diff, Tensor input, Tensor target, "
      "bool target_is_gram, float scale, int reduction, bool input_grad, bool target_grad) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgenloss, CompositeExplicitAutograd, m) {
  m.impl("gram", &fastgenloss::gram_impl);
  m.impl("gram_bwd", &fastgenloss::gram_bwd_impl);
  m.impl("style_fwd", &fastgenloss::style_fwd_impl);
  m.impl("style_bwd", &fastgenloss::style_bwd_impl);
}

// The backward ops are differentiated no further: a second derivative raises (core/autograd.h).
TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  const char* msg =
      "fastgenloss: second derivatives of the Gram matrix / style loss are not implemented "
      "(differentiate once, without create_graph=True)";
  m.impl("gram_bwd", fastgenloss::first_order_only(msg));
  m.impl("style_bwd", fastgenloss::first_order_only(msg));
}
