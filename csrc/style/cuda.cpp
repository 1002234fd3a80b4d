// Glue of the hand-written CUDA Gram kernel (kernels.cu): checks, the split plan, scratch.
// Launches on torch's current stream; no host synchronization.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "style/launch.h"
#include "style/cuda.h"
#include "core/config.h"
#include "core/tensor_utils.h"

namespace fastgenloss {
namespace {

constexpr int64_t kMaxC = 2048;  // above: scratch grows as C^2 per range; cuBLAS does well there

int sm_count_of(const at::Tensor& t) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.device().index()) != cudaSuccess ||
      sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return sms;
}

GramLaunch plan(const at::Tensor& x, const at::Tensor& y) {
  GramLaunch a{};
  a.dtype = dtype_of(x.scalar_type());
  // float32: one TF32 product where torch allows TF32 for matmuls (what cuBLAS would do), else
  // three TF32 parts and six products (float32 accuracy, gram_plan.h)
  a.math = x.scalar_type() != at::kFloat ? GramMath::Native
           : at::globalContext().allowTF32CuBLAS() ? GramMath::TF32
                                                    : GramMath::F32;
  a.n = x.size(0);
  a.c = x.size(1);
  a.l = x.size(2);
  a.x = x.const_data_ptr();
  a.y = y.defined() ? y.const_data_ptr() : nullptr;
  gram_plan_splits(a, int64_t(4) * sm_count_of(x));  // about 4 blocks of 4 warps per SM
  return a;
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace

bool gram_cuda_takes(const at::Tensor& f3) {
  if (get_switch(Switch::kGramCudaKernel) == 0 || !f3.is_cuda() || f3.dim() != 3) return false;
  const auto t = f3.scalar_type();
  if (t != at::kFloat && t != at::kHalf && t != at::kBFloat16) return false;
  return f3.size(0) >= 1 && f3.size(0) <= 65535 && f3.size(1) >= 1 && f3.size(1) <= kMaxC &&
         f3.size(2) >= 1;
}

at::Tensor gram_cuda(const at::Tensor& f3_, double scale) {
  const c10::cuda::CUDAGuard guard(f3_.device());
  const at::Tensor f3 = f3_.contiguous();
  const GramLaunch a = plan(f3, at::Tensor());
  at::Tensor scratch = at::empty({gram_scratch_elems(a)}, f3.options().dtype(at::kFloat));
  at::Tensor out = at::empty({a.n, a.c, a.c}, f3.options());
  C10_CUDA_CHECK(launch_gram(a, scale, scratch.mutable_data_ptr<float>(), out.mutable_data_ptr(),
                             stream_of(f3)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> style_diff_cuda(const at::Tensor& x3_, const at::Tensor& y3_,
                                                   const at::Tensor& target_gram, double scale) {
  const c10::cuda::CUDAGuard guard(x3_.device());
  const at::Tensor x3 = x3_.contiguous();
  const at::Tensor y3 = y3_.defined() ? y3_.to(x3.scalar_type()).contiguous() : at::Tensor();
  if (y3.defined()) {
    TORCH_CHECK(y3.sizes() == x3.sizes(), "fastgenloss::style: target features ", y3.sizes(),
                " must match input ", x3.sizes());
  }
  at::Tensor tg;
  int64_t tb = 0;
  if (target_gram.defined()) {
    tg = target_gram.to(x3.device(), at::kFloat).contiguous();
    tb = tg.size(0);
  }
  const GramLaunch a = plan(x3, y3);
  const auto fopts = x3.options().dtype(at::kFloat);
  at::Tensor scratch = at::empty({gram_scratch_elems(a)}, fopts);
  at::Tensor d = at::empty({a.n, a.c, a.c}, fopts);
  at::Tensor sq = at::empty({gram_finish_blocks(a)}, fopts);
  C10_CUDA_CHECK(launch_style_diff(a, scale, tg.defined() ? tg.const_data_ptr<float>() : nullptr, tb,
                                   scratch.mutable_data_ptr<float>(), d.mutable_data_ptr<float>(),
                                   sq.mutable_data_ptr<float>(), stream_of(x3)));
  return {d, sq.sum()};
}

}  // namespace fastgenloss
