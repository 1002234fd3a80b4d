// The Lovász losses (smp's LovaszLoss: the hinge for binary / multilabel, the softmax for
// multiclass; the math of lovasz.h), one op each way:
//   lovasz_fwd(input [N, C, M], target, kind, per_image, has_ignore, ignore_index, write_grad)
//     -> (loss [] in the accumulation dtype, grad: d loss / d input for grad_output = 1, input's
//        layout and dtype, or [0] without write_grad)
//   lovasz_bwd(grad_output, grad, input) -> grad * grad_output (differentiated no further)
// The gradient falls out of the sort the forward does anyway, so the forward writes it and the
// backward only scales it (C++ autograd below, the pixel ops' pattern).
//
// CPU: per problem (a class, or a class of one image; the hinge: the batch, or one image) the
// valid elements' errors are gathered, radix-sorted in decreasing order with their positions
// (LSD on the IEEE bits, 8-bit digits, passes whose digit is constant skipped: stable, so ties
// keep element order), and walked once for the loss and each element's derivative. Problems run
// in parallel; their losses are added in a fixed order (deterministic). Memory beyond the
// gradient: per thread, 2 x (key + index) per element of a problem (16 bytes for float, 24 for
// double), the softmax's log-sum-exp per position, and for half-precision input a float
// [N, C, M] scratch of d loss / d p.
//
// Other devices (CUDA): the same loss from ATen ops (a stable sort of every problem's errors at
// once along rows, cumulative sums for the counts): [problems, elements] errors, indices and
// counts are held, about 5x the logits' float size. It is also the CPU kernel's cross-check in
// the tests (the switch lovasz_cpu_kernel off).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/config.h"
#include "core/tensor_utils.h"
#include "segmentation/lovasz.h"

namespace fastgenloss {
namespace {

using Tensor = at::Tensor;
constexpr const char* kOp = "fastgenloss::lovasz_fwd";

// Keys whose unsigned ascending order is the values' descending order (-0 counts as +0).
inline uint32_t descending_key(float v) {
  v += 0.0f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u = (u >> 31) ? ~u : (u | 0x80000000u);
  return ~u;
}
inline uint64_t descending_key(double v) {
  v += 0.0;
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  u = (u >> 63) ? ~u : (u | (uint64_t(1) << 63));
  return ~u;
}

// Stable LSD radix sort of (key, index) pairs by key; returns the buffer the result is in.
template <typename K>
std::pair<K*, uint32_t*> radix_sort(K* keys, uint32_t* idx, K* keys_tmp, uint32_t* idx_tmp,
                                    int64_t n) {
  constexpr int kPasses = sizeof(K);
  std::vector<int64_t> hist(kPasses * 256, 0);
  for (int64_t i = 0; i < n; ++i) {
    const K k = keys[i];
    for (int p = 0; p < kPasses; ++p) ++hist[p * 256 + ((k >> (8 * p)) & 255)];
  }
  for (int p = 0; p < kPasses; ++p) {
    int64_t* h = hist.data() + p * 256;
    bool trivial = false;
    for (int d = 0; d < 256; ++d) trivial = trivial || h[d] == n;
    if (trivial) continue;  // every key has this digit: the order is unchanged
    int64_t offset = 0;
    for (int d = 0; d < 256; ++d) {
      const int64_t c = h[d];
      h[d] = offset;
      offset += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = h[(keys[i] >> (8 * p)) & 255]++;
      keys_tmp[at] = keys[i];
      idx_tmp[at] = idx[i];
    }
    std::swap(keys, keys_tmp);
    std::swap(idx, idx_tmp);
  }
  return {keys, idx};
}

// One problem's scratch, reused across the problems a thread solves.
template <typename acc_t>
struct Scratch {
  using key_t = std::conditional_t<std::is_same_v<acc_t, double>, uint64_t, uint32_t>;
  std::vector<acc_t> err, weight;   // error and foreground weight (0/1, or t for the hinge)
  std::vector<int64_t> where;       // element offset in the input
  std::vector<key_t> keys, keys_tmp;
  std::vector<uint32_t> idx, idx_tmp;
  std::vector<acc_t> derr;          // d loss / d error, per gathered element
  void resize(int64_t n) {
    err.resize(n), weight.resize(n), where.resize(n), keys.resize(n), keys_tmp.resize(n);
    idx.resize(n), idx_tmp.resize(n), derr.resize(n);
  }
};

// Sorts the k gathered errors, walks them: the loss sum_k f(e) g_k (f = relu for the hinge)
// and derr = d loss / d e (unweighted).
template <typename acc_t>
double solve(Scratch<acc_t>& s, int64_t k, double fg_total, bool hinge, bool want_grad) {
  for (int64_t i = 0; i < k; ++i) {
    s.keys[i] = descending_key(s.err[i]);
    s.idx[i] = uint32_t(i);
  }
  auto [keys, order] = radix_sort(s.keys.data(), s.idx.data(), s.keys_tmp.data(),
                                  s.idx_tmp.data(), k);
  (void)keys;
  double loss = 0.0, fg = 0.0, bg = 0.0, prev = 0.0;
  for (int64_t r = 0; r < k; ++r) {
    const uint32_t i = order[r];
    const double w = double(s.weight[i]);
    fg += w;
    bg += 1.0 - w;
    const double j = lovasz_jaccard(fg_total, fg, bg);
    const double g = j - prev;
    prev = j;
    const double e = double(s.err[i]);
    const bool active = !hinge || e > 0.0;
    if (active) loss += e * g;
    if (want_grad) s.derr[i] = active ? acc_t(g) : acc_t(0);
  }
  return loss;
}

template <typename scalar_t>
double lovasz_softmax_cpu(const Tensor& x, const Tensor& labels, bool per_image, bool has_ignore,
                          int64_t ignore_index, Tensor* grad) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = x.size(0), c = x.size(1), m = x.size(2);
  const scalar_t* z = x.const_data_ptr<scalar_t>();
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  auto valid = [&](int64_t pos) { return !(has_ignore && lab[pos] == ignore_index); };
  // log-sum-exp per position
  std::vector<acc_t> lse(n * m);
  at::parallel_for(0, n * m, 4096, [&](int64_t b, int64_t e) {
    for (int64_t pos = b; pos < e; ++pos) {
      const int64_t i = pos / m, j = pos % m;
      const scalar_t* zp = z + i * c * m + j;
      acc_t mx = acc_t(zp[0]);
      for (int64_t k = 1; k < c; ++k) mx = std::max(mx, acc_t(zp[k * m]));
      acc_t sum = 0;
      for (int64_t k = 0; k < c; ++k) sum += std::exp(acc_t(zp[k * m]) - mx);
      lse[pos] = mx + std::log(sum);
    }
  });
  // problems: (image, class) per image, else (class); foreground counts first (presence)
  const int64_t images = per_image ? n : 1, per = per_image ? m : n * m;
  std::vector<double> fg_count(images * c, 0.0);
  for (int64_t pos = 0; pos < n * m; ++pos) {
    const int64_t l = lab[pos];
    if (valid(pos) && l >= 0 && l < c) fg_count[(per_image ? pos / m : 0) * c + l] += 1.0;
  }
  std::vector<double> present(images, 0.0);
  for (int64_t im = 0; im < images; ++im) {
    for (int64_t k = 0; k < c; ++k) present[im] += fg_count[im * c + k] > 0 ? 1.0 : 0.0;
  }
  // d loss / d p, [N, C, M] (the gradient itself where it is the accumulation dtype)
  Tensor dp;
  acc_t* dpp = nullptr;
  if (grad != nullptr) {
    dp = std::is_same_v<scalar_t, acc_t> ? *grad : at::empty(x.sizes(), x.options().dtype(
                                                       c10::CppTypeToScalarType<acc_t>::value));
    dp.zero_();
    dpp = dp.mutable_data_ptr<acc_t>();
  }
  std::vector<double> losses(images * c, 0.0);
  at::parallel_for(0, images * c, 1, [&](int64_t b, int64_t e) {
    Scratch<acc_t> s;
    s.resize(per);
    for (int64_t prob = b; prob < e; ++prob) {
      const int64_t im = prob / c, cls = prob % c;
      if (fg_count[prob] == 0) continue;  // classes="present"
      const int64_t first = per_image ? im * m : 0;
      int64_t k = 0;
      for (int64_t pos = first; pos < first + per; ++pos) {
        if (!valid(pos)) continue;
        const int64_t i = pos / m, j = pos % m;
        const int64_t off = (i * c + cls) * m + j;
        const bool fg = lab[pos] == cls;
        const acc_t p = std::exp(acc_t(z[off]) - lse[pos]);
        s.err[k] = lovasz_softmax_error(p, fg);
        s.weight[k] = fg ? acc_t(1) : acc_t(0);
        s.where[k] = off;
        ++k;
      }
      losses[prob] = solve(s, k, fg_count[prob], /*hinge=*/false, grad != nullptr);
      if (grad != nullptr) {
        const double scale = 1.0 / (present[im] * double(images));
        for (int64_t r = 0; r < k; ++r) {
          dpp[s.where[r]] = acc_t(double(s.derr[r]) * scale) *
                            lovasz_softmax_derror<acc_t>(s.weight[r] > acc_t(0));
        }
      }
    }
  });
  double loss = 0.0;
  for (int64_t im = 0; im < images; ++im) {
    double sum = 0.0;
    for (int64_t k = 0; k < c; ++k) sum += losses[im * c + k];
    if (present[im] > 0) loss += sum / present[im];
  }
  loss /= double(images);
  if (grad != nullptr) {  // softmax backward: dz_k = p_k (dp_k - sum_c p_c dp_c)
    scalar_t* g = grad->mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * m, 4096, [&](int64_t b, int64_t e) {
      std::vector<acc_t> p(c);  // the position's probabilities, one exp each
      for (int64_t pos = b; pos < e; ++pos) {
        const int64_t i = pos / m, j = pos % m;
        const int64_t base = i * c * m + j;
        if (!valid(pos)) {
          for (int64_t k = 0; k < c; ++k) g[base + k * m] = scalar_t(0);
          continue;
        }
        acc_t dot = 0;
        for (int64_t k = 0; k < c; ++k) {
          p[k] = std::exp(acc_t(z[base + k * m]) - lse[pos]);
          dot += p[k] * dpp[base + k * m];
        }
        for (int64_t k = 0; k < c; ++k) {
          g[base + k * m] = scalar_t(p[k] * (dpp[base + k * m] - dot));
        }
      }
    });
  }
  return loss;
}

template <typename scalar_t>
double lovasz_hinge_cpu(const Tensor& x, const Tensor& target, bool per_image, bool has_ignore,
                        double ignore_value, Tensor* grad) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t n = x.size(0), per_sample = x.numel() / std::max<int64_t>(n, 1);
  const scalar_t* z = x.const_data_ptr<scalar_t>();
  const scalar_t* t = target.const_data_ptr<scalar_t>();
  const int64_t images = per_image ? n : 1, per = per_image ? per_sample : x.numel();
  scalar_t* g = grad != nullptr ? grad->mutable_data_ptr<scalar_t>() : nullptr;
  if (g != nullptr) grad->zero_();
  std::vector<double> losses(images, 0.0);
  at::parallel_for(0, images, 1, [&](int64_t b, int64_t e) {
    Scratch<acc_t> s;
    s.resize(per);
    for (int64_t im = b; im < e; ++im) {
      int64_t k = 0;
      double fg_total = 0.0;
      for (int64_t off = im * per; off < (im + 1) * per; ++off) {
        const acc_t tv = acc_t(t[off]);
        if (has_ignore && double(tv) == ignore_value) continue;
        s.err[k] = lovasz_hinge_error(acc_t(z[off]), tv);
        s.weight[k] = tv;
        s.where[k] = off;
        fg_total += double(tv);
        ++k;
      }
      if (k == 0) continue;  // only ignored elements: no loss, no gradient (smp)
      losses[im] = solve(s, k, fg_total, /*hinge=*/true, g != nullptr);
      if (g != nullptr) {
        const double scale = 1.0 / double(images);
        for (int64_t r = 0; r < k; ++r) {
          g[s.where[r]] = scalar_t(acc_t(double(s.derr[r]) * scale) *
                                   lovasz_hinge_derror(s.weight[r]));
        }
      }
    }
  });
  double loss = 0.0;
  for (double v : losses) loss += v;
  return loss / double(images);
}

void check_args(const Tensor& input, const Tensor& target, int64_t kind) {
  TORCH_CHECK(kind == kLovaszHinge || kind == kLovaszSoftmax, kOp, ": unknown kind ", kind);
  TORCH_CHECK(input.dim() == 3 && at::isFloatingType(input.scalar_type()), kOp,
              ": input must be floating logits [N, C, M], got ", input.scalar_type(), " ",
              input.sizes());
  TORCH_CHECK(target.device() == input.device(), kOp, ": target is on ", target.device(),
              " but input is on ", input.device());
  TORCH_CHECK(input.numel() < (int64_t(1) << 32), kOp, ": at most 2^32 elements, got ",
              input.numel());
  if (kind == kLovaszSoftmax) {
    TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 2 &&
                    target.size(0) == input.size(0) && target.size(1) == input.size(2),
                kOp, ": multiclass labels must be int64 [N, M] = [", input.size(0), ", ",
                input.size(2), "], got ", target.scalar_type(), " ", target.sizes());
  } else {
    TORCH_CHECK(target.sizes() == input.sizes() && target.scalar_type() == input.scalar_type(),
                kOp, ": the hinge's target must have the input's shape and dtype ",
                input.sizes(), " ", input.scalar_type(), ", got ", target.sizes(), " ",
                target.scalar_type());
  }
}

std::tuple<Tensor, Tensor> lovasz_fwd_aten(const Tensor& input, const Tensor& target,
                                           int64_t kind, bool per_image, bool has_ignore,
                                           int64_t ignore_index, bool write_grad);

std::tuple<Tensor, Tensor> lovasz_fwd_cpu(const Tensor& input, const Tensor& target,
                                          int64_t kind, bool per_image, bool has_ignore,
                                          int64_t ignore_index, bool write_grad) {
  if (get_switch(Switch::kLovaszCpuKernel) == 0) {
    return lovasz_fwd_aten(input, target, kind, per_image, has_ignore, ignore_index, write_grad);
  }
  check_args(input, target, kind);
  const Tensor x = input.contiguous(), t = target.contiguous();
  Tensor grad = write_grad ? at::empty_like(x) : at::empty({0}, x.options());
  double loss = 0.0;
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lovasz_cpu", [&] {
      loss = kind == kLovaszSoftmax
                 ? lovasz_softmax_cpu<scalar_t>(x, t, per_image, has_ignore, ignore_index,
                                                write_grad ? &grad : nullptr)
                 : lovasz_hinge_cpu<scalar_t>(x, t, per_image, has_ignore, double(ignore_index),
                                              write_grad ? &grad : nullptr);
    });
  } else if (write_grad) {
    grad.zero_();
  }
  return {at::scalar_tensor(loss, x.options().dtype(acc_scalar_type(x.scalar_type()))), grad};
}

// ---- ATen path (CUDA; the CPU kernel's cross-check) -----------------------------------------

// errors / weights / validity [P, K] -> (loss per problem [P], d loss / d error [P, K]).
std::tuple<Tensor, Tensor> lovasz_rows(const Tensor& err, const Tensor& weight,
                                       const Tensor& valid, bool hinge) {
  const auto opts = err.options().dtype(at::kDouble);
  const Tensor e = at::where(valid, err, at::full({}, -INFINITY, err.options()));
  const auto [sorted, perm] = at::sort(e, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const Tensor w = weight.to(at::kDouble).gather(1, perm);
  const Tensor v = valid.gather(1, perm).to(at::kDouble);
  const Tensor fg = (w * v).cumsum(1), bg = ((1.0 - w) * v).cumsum(1);
  const Tensor total = (weight.to(at::kDouble) * valid.to(at::kDouble)).sum(1, true);
  const Tensor j = 1.0 - (total - fg) / (total + bg);
  const Tensor g = at::cat({j.narrow(1, 0, 1), j.narrow(1, 1, j.size(1) - 1) -
                                               j.narrow(1, 0, j.size(1) - 1)}, 1) * v;
  Tensor es = at::where(v > 0, sorted.to(at::kDouble), at::zeros({}, opts));
  Tensor active = v;
  if (hinge) {
    active = (es > 0).to(at::kDouble) * v;
    es = es.clamp_min(0);
  }
  const Tensor loss = (es * g).sum(1);
  const Tensor derr = at::zeros_like(g).scatter(1, perm, g * active);
  return {loss, derr};
}

std::tuple<Tensor, Tensor> lovasz_fwd_aten(const Tensor& input, const Tensor& target,
                                           int64_t kind, bool per_image, bool has_ignore,
                                           int64_t ignore_index, bool write_grad) {
  check_args(input, target, kind);
  const auto acc = acc_scalar_type(input.scalar_type());
  const int64_t n = input.size(0), c = input.size(1), m = input.size(2);
  Tensor grad = at::empty({0}, input.options());
  if (input.numel() == 0) {
    return {at::zeros({}, input.options().dtype(acc)),
            write_grad ? at::zeros_like(input) : grad};
  }
  const int64_t images = per_image ? n : 1;
  if (kind == kLovaszSoftmax) {
    const Tensor p = input.to(acc).softmax(1);                           // [N, C, M]
    const Tensor valid = has_ignore ? target.ne(ignore_index) : at::ones_like(target, at::kBool);
    const Tensor fg = at::one_hot(at::where(valid, target, at::zeros_like(target)), c)
                          .permute({0, 2, 1}).to(at::kBool) & valid.unsqueeze(1);  // [N, C, M]
    // rows: (image, class), or (class) over the batch
    auto rows = [&](const Tensor& t) {  // [N, C, M] -> [images * C, K]
      return per_image ? t.reshape({n * c, m}) : t.permute({1, 0, 2}).reshape({c, n * m});
    };
    const Tensor err = at::where(fg, 1.0 - p, p);
    const Tensor vrows = rows(valid.unsqueeze(1).expand({n, c, m}));
    auto [loss_rows, derr] = lovasz_rows(rows(err), rows(fg), vrows, /*hinge=*/false);
    const Tensor present = (rows(fg).sum(1) > 0).to(at::kDouble).reshape({images, c});
    const Tensor count = present.sum(1, true);
    const Tensor scale = at::where(count > 0, 1.0 / (count * double(images)),
                                   at::zeros_like(count));          // [images, 1]
    const Tensor loss = (loss_rows.reshape({images, c}) * present * scale).sum();
    if (write_grad) {
      Tensor d = (derr * (present * scale).reshape({images * c, 1}));
      d = per_image ? d.reshape({n, c, m}) : d.reshape({c, n, m}).permute({1, 0, 2});
      const Tensor dp = at::where(fg, -d, d).to(acc);
      grad = (p * (dp - (p * dp).sum(1, true))).to(input.scalar_type());
    }
    return {loss.to(acc), grad};
  }
  const Tensor t = target.to(acc), z = input.to(acc);
  const Tensor valid = has_ignore ? target.ne(double(ignore_index)) : at::ones_like(t, at::kBool);
  const Tensor err = 1.0 - z * (2.0 * t - 1.0);
  auto [loss_rows, derr] = lovasz_rows(err.reshape({images, -1}), t.reshape({images, -1}),
                                       valid.reshape({images, -1}), /*hinge=*/true);
  const Tensor loss = loss_rows.sum() / double(images);
  if (write_grad) {
    grad = (derr.reshape(input.sizes()) * (1.0 - 2.0 * t.to(at::kDouble)) / double(images))
               .to(input.scalar_type());
  }
  return {loss.to(acc), grad};
}

// input only links the result to the logits for autograd (a second derivative must raise,
// not find no path); its values are not read.
Tensor lovasz_bwd_kernel(const Tensor& grad_output, const Tensor& grad, const Tensor& input) {
  (void)input;
  return grad * grad_output.to(grad.scalar_type());
}

// ---- autograd ------------------------------------------------------------------------------

using FwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, bool, bool,
                                          int64_t, bool);
using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&);

// Edges: input, target. Gradient in: loss.
struct LovaszFwdBackward final : LossNode {
  std::string name() const override { return "LovaszFwdBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    target_.reset_data();
    release_grad_buffer();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    auto [buf, in_place] = take_grad_buffer();
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    if (!buf.defined()) {
      // A second backward (retain_graph=True) or a create_graph one after the buffer was
      // handed out: the forward runs again for a fresh gradient (the sort is the gradient).
      static const auto fwd = op_handle<FwdSig>("fastgenloss::lovasz_fwd");
      const Tensor input = input_.unpack(), target = target_.unpack();
      buf = std::get<1>(below_autograd([&] {
        return fwd.call(input, target, kind, per_image, has_ignore, ignore_index, true);
      }));
      in_place = !at::GradMode::is_enabled() && plain_tensor(buf);
    }
    if (in_place) {
      out[0] = scaled_grad(buf, grads[0], true);
    } else {  // through lovasz_bwd's autograd kernel: a second derivative raises there
      static const auto bwd = op_handle<BwdSig>("fastgenloss::lovasz_bwd");
      out[0] = bwd.call(grads[0], buf, input_.unpack());
    }
    return out;
  }

  SavedVariable input_, target_;
  int64_t kind = 0, ignore_index = 0;
  bool per_image = false, has_ignore = false;
};

std::tuple<Tensor, Tensor> lovasz_fwd_autograd(const Tensor& input, const Tensor& target,
                                               int64_t kind, bool per_image, bool has_ignore,
                                               int64_t ignore_index, bool write_grad) {
  static const auto op = op_handle<FwdSig>("fastgenloss::lovasz_fwd");
  auto node = make_node<LovaszFwdBackward>("lovasz_fwd", input, target);
  TORCH_CHECK(!node || write_grad, kOp, ": a differentiable call needs write_grad=True");
  auto [loss, grad] = below_autograd([&] {
    return op.call(input, target, kind, per_image, has_ignore, ignore_index, write_grad);
  });
  if (node) {
    node->input_ = SavedVariable(input, false);
    node->target_ = SavedVariable(target, false);
    node->kind = kind, node->per_image = per_image, node->has_ignore = has_ignore;
    node->ignore_index = ignore_index;
    record_outputs(node, {loss});
    node->hold_grad_buffer(grad);
  }
  return {loss, grad};
}

}  // namespace
}  // namespace fastgenloss

TORCH_LIBRARY_IMPL(fastgenloss, CPU, m) {
  m.impl("lovasz_fwd", &fastgenloss::lovasz_fwd_cpu);
  m.impl("lovasz_bwd", &fastgenloss::lovasz_bwd_kernel);
}

TORCH_LIBRARY_IMPL(fastgenloss, CUDA, m) {
  m.impl("lovasz_fwd", &fastgenloss::lovasz_fwd_aten);
  m.impl("lovasz_bwd", &fastgenloss::lovasz_bwd_kernel);
}

TORCH_LIBRARY_IMPL(fastgenloss, Autograd, m) {
  m.impl("lovasz_fwd", &fastgenloss::lovasz_fwd_autograd);
  m.impl("lovasz_bwd", fastgenloss::first_order_only(
                           "fastgenloss: second derivatives of the Lovász losses are not "
                           "implemented (differentiate once, without create_graph=True)"));
}
