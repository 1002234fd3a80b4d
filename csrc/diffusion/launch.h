// Launchers of the CUDA diffusion kernels: plain C++ with raw pointers (no torch headers in
// the .cu file). Tensors are [N, M] in memory: sample n's M elements at [n*M, (n+1)*M).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "diffusion/math.h"
#include "core/dtype.h"

namespace fastgenloss {

struct DiffusionLaunch {
  DType dtype;       // of model_output, sample, noise (one dtype)
  int64_t n_samples, m;   // N and elements per sample
  const void* model_output;
  const void* sample;     // nullptr when the loss does not read it (b = 0)
  const void* noise;      // nullptr when the loss does not read it (c = 0)
  DiffusionValues values;
  const void* weight;     // per-sample weights [N] in the accumulation dtype, or nullptr
  DiffusionLossParams params;
  int64_t reduction;
};

// Blocks per sample of the [N, M] kernels on `device`; the forward needs N * bps accumulators
// (float, double for double input) of scratch.
int diffusion_blocks_per_sample(int64_t n_samples, int64_t m, int device);

// loss: [] (mean, sum) or [N] (none), sample_loss: [N] w_n * mean of rho (before the caller's
// weight), both in the accumulation dtype; grad (nullptr: none): d loss / d model_output for
// grad_output = 1.
cudaError_t launch_diffusion_fwd(const DiffusionLaunch& a, void* loss, void* sample_loss,
                                 void* grad, void* scratch, int bps, cudaStream_t stream);
// grad_output: 1 element (mean, sum) or N (none), accumulation dtype. Each output may be nullptr.
cudaError_t launch_diffusion_bwd(const DiffusionLaunch& a, const void* grad_output,
                                 void* grad_model_output, void* grad_sample, void* grad_noise,
                                 int bps, cudaStream_t stream);

struct MixLaunch {
  DType dtype;
  int64_t n_samples, m;
  const void* sample;  // or, for the backward, grad_output
  const void* noise;   // nullptr for the backward
  DiffusionValues values;
  int64_t kind;        // DiffusionMix
};

// out = p*sample + q*noise
cudaError_t launch_diffusion_mix(const MixLaunch& a, void* out, int bps, cudaStream_t stream);
// grad_sample = p*g, grad_noise = q*g (either may be nullptr), g = a.sample
cudaError_t launch_diffusion_mix_bwd(const MixLaunch& a, void* grad_sample, void* grad_noise,
                                     int bps, cudaStream_t stream);

}  // namespace fastgenloss
