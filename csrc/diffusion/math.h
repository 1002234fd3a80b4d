// Diffusion-loss math: the one definition of every per-sample coefficient, weighting and
// element loss, shared by the CPU kernels (cpu.cpp) and the CUDA kernels
// (kernels.cu). Torch-free, so nvcc compiles it without ATen.
//
// Every loss of this family has, for sample n and element j, the residual
//     r = a_n * model_output + b_n * sample + c_n * noise
// (the prediction minus the target, both affine in the three inputs), the element loss rho(r)
// and the per-sample loss
//     L_n = w_n * mean_j rho(r_nj),
// then a batch reduction. a, b, c and w depend only on the sample's schedule value: the
// cumulative alpha of its timestep (DDPM-style schedules) or its sigma (flow matching, EDM).
// The coefficients are computed in double once per sample; elements run in float (double for
// double inputs).
//
// The noising ops ("mix") are out = p_n * sample + q_n * noise with p, q from the same value.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"
#include "core/reduction.h"

namespace fastgenloss {

// Where a sample's schedule value comes from (schema int `schedule`).
enum DiffusionSchedule : int64_t {
  kSchedAlphasCumprod = 0,  // value = alphas_cumprod[timesteps[n]] (DDPM, DDIM, ...)
  kSchedFlow = 1,           // value = sigmas[n], x_s = (1 - s) x0 + s eps (rectified flow)
  kSchedEDM = 2,            // value = sigmas[n], x_s = x0 + s eps (Karras et al. 2022)
};

enum DiffusionPrediction : int64_t {
  kPredEpsilon = 0,  // DDPM: target eps.            EDM: c_out = +s*sd / sqrt(s^2 + sd^2)
  kPredV = 1,        // DDPM: target sqrt(ab) eps - sqrt(1-ab) x0.  EDM: c_out negated
  kPredSample = 2,   // DDPM: target x0
  kPredFlow = 3,     // flow matching: target eps - x0
};

enum DiffusionWeighting : int64_t {
  kWeightNone = 0,
  kWeightMinSnr = 1,         // Min-SNR-gamma as in diffusers' train_text_to_image.py
  kWeightMinSnrFloored = 2,  // the variant of diffusers' dreambooth scripts
  kWeightSnr = 3,            // SNR(t)
  kWeightInverseSnr = 4,     // 1 / max(SNR(t), kMinSnrForInverse)
  kWeightSigmaSqrt = 5,      // sigma^-2 (diffusers' SD3 "sigma_sqrt")
  kWeightCosmap = 6,         // 2 / (pi (1 - 2 s + 2 s^2)) (SD3 "cosmap")
  kWeightEdm = 7,            // (s^2 + sd^2) / (s sd)^2 (Karras et al. 2022, lambda(sigma))
};

enum DiffusionLossType : int64_t {
  kLossL2 = 0,           // r^2
  kLossL1 = 1,           // |r|
  kLossHuber = 2,        // torch's huber_loss with delta = huber_c
  kLossPseudoHuber = 3,  // 2 c (sqrt(r^2 + c^2) - c), diffusers' "huber" loss_type
};

enum DiffusionMix : int64_t {
  kMixAddNoise = 0,  // sqrt(ab) x0 + sqrt(1 - ab) eps   (DDPMScheduler.add_noise)
  kMixVelocity = 1,  // sqrt(ab) eps - sqrt(1 - ab) x0   (DDPMScheduler.get_velocity)
  kMixFlow = 2,      // (1 - s) x0 + s eps
  kMixEdm = 3,       // x0 + s eps
};

// 1/SNR is unbounded at a zero-terminal-SNR step; the inverse-SNR weight caps it here.
constexpr double kMinSnrForInverse = 1e-6;

// Dtype codes of the per-sample value tensor (timesteps or sigmas) and of the table.
enum DiffusionIndexType : int { kIdxInt64 = 0, kIdxInt32 = 1, kIdxFloat = 2, kIdxDouble = 3 };

// Where the kernels read each sample's schedule value: plain pointers, valid on the device
// (CUDA) or the host (CPU) that runs the kernel.
struct DiffusionValues {
  int64_t schedule;   // DiffusionSchedule
  const void* t;      // timesteps (int32/int64) or sigmas (float/double), [N]
  int t_type;         // DiffusionIndexType
  const void* table;  // alphas_cumprod [table_len] for kSchedAlphasCumprod
  int table_type;     // kIdxFloat or kIdxDouble
  int64_t table_len;
};

// The schedule value of sample n; NaN for a timestep outside [0, table_len), so a bad index
// never reads out of bounds and poisons only its own sample (the API checks ranges first
// wherever that costs no device synchronization).
FGL_HOST_DEVICE double diffusion_value(const DiffusionValues& v, int64_t n) {
  if (v.schedule != kSchedAlphasCumprod) {
    return v.t_type == kIdxDouble ? static_cast<const double*>(v.t)[n]
                                  : double(static_cast<const float*>(v.t)[n]);
  }
  const int64_t idx = v.t_type == kIdxInt64 ? static_cast<const int64_t*>(v.t)[n]
                                            : int64_t(static_cast<const int32_t*>(v.t)[n]);
  if (idx < 0 || idx >= v.table_len) return NAN;
  return v.table_type == kIdxDouble ? static_cast<const double*>(v.table)[idx]
                                    : double(static_cast<const float*>(v.table)[idx]);
}

// The scalar arguments of the loss ops, in schema order.
struct DiffusionLossParams {
  int64_t schedule, prediction, weighting, loss_type;
  double snr_gamma, huber_c, sigma_data;
};

// Per-sample coefficients: r = a*model_output + b*sample + c*noise, loss weight w.
struct DiffusionCoef {
  double a, b, c, w;
};

// SNR(t) = ab / (1 - ab) of a DDPM-style step: 0 at a zero-terminal-SNR step (ab = 0).
FGL_HOST_DEVICE double snr_of_alpha_bar(double ab) { return ab / (1.0 - ab); }

// min(SNR, gamma) / SNR written so that SNR = 0 gives its limit 1 (not 0/0).
FGL_HOST_DEVICE double min_snr_over_snr(double snr, double gamma) {
  return snr <= gamma ? 1.0 : gamma / snr;
}

FGL_HOST_DEVICE double snr_weight(int64_t weighting, int64_t prediction, double snr,
                                  double gamma) {
  switch (weighting) {
    case kWeightMinSnr:
      if (prediction == kPredEpsilon) return min_snr_over_snr(snr, gamma);
      if (prediction == kPredV) return (snr < gamma ? snr : gamma) / (snr + 1.0);
      return snr < gamma ? snr : gamma;  // sample
    case kWeightMinSnrFloored:
      return min_snr_over_snr(snr, gamma) + (prediction == kPredV ? 1.0 : 0.0);
    case kWeightSnr:
      return snr;
    case kWeightInverseSnr:
      return 1.0 / (snr > kMinSnrForInverse ? snr : kMinSnrForInverse);
    default:
      return 1.0;
  }
}

FGL_HOST_DEVICE double sigma_weight(int64_t weighting, double s, double sd) {
  switch (weighting) {
    case kWeightSigmaSqrt: return 1.0 / (s * s);
    case kWeightCosmap: return 2.0 / (M_PI * (1.0 - 2.0 * s + 2.0 * s * s));
    case kWeightEdm: return (s * s + sd * sd) / ((s * sd) * (s * sd));
    default: return 1.0;
  }
}

// The coefficients of a sample whose schedule value is `v` (alpha-bar or sigma). A NaN value
// (bad timestep) gives NaN coefficients.
FGL_HOST_DEVICE DiffusionCoef diffusion_coef(const DiffusionLossParams& p, double v) {
  DiffusionCoef k{1.0, 0.0, 0.0, 1.0};
  if (p.schedule == kSchedAlphasCumprod) {
    const double sa = sqrt(v), s1 = sqrt(1.0 - v);
    if (p.prediction == kPredEpsilon) {
      k.c = -1.0;
    } else if (p.prediction == kPredV) {  // v = sqrt(ab) eps - sqrt(1 - ab) x0
      k.b = s1;
      k.c = -sa;
    } else {  // sample
      k.b = -1.0;
    }
    k.w = snr_weight(p.weighting, p.prediction, snr_of_alpha_bar(v), p.snr_gamma);
    if (v != v) k = DiffusionCoef{NAN, NAN, NAN, NAN};
  } else if (p.schedule == kSchedFlow) {  // target eps - x0, independent of sigma
    k.b = 1.0;
    k.c = -1.0;
    k.w = sigma_weight(p.weighting, v, p.sigma_data);
    if (v != v) k = DiffusionCoef{NAN, NAN, NAN, NAN};
  } else {  // EDM: D = c_skip (x0 + s eps) + c_out F, target x0
    const double sd = p.sigma_data, den = v * v + sd * sd;
    const double c_skip = sd * sd / den;
    const double c_out = v * sd / sqrt(den);
    k.a = p.prediction == kPredV ? -c_out : c_out;
    k.b = c_skip - 1.0;
    k.c = c_skip * v;
    k.w = sigma_weight(p.weighting, v, sd);
  }
  return k;
}

// Element loss and its derivative d rho / d r.
template <typename acc_t>
FGL_HOST_DEVICE acc_t diffusion_rho(int64_t loss_type, acc_t r, acc_t hc) {
  const acc_t ar = r < acc_t(0) ? -r : r;
  switch (loss_type) {
    case kLossL1: return ar;
    case kLossHuber:
      return ar < hc ? acc_t(0.5) * r * r : hc * (ar - acc_t(0.5) * hc);
    case kLossPseudoHuber:
      return acc_t(2) * hc * (sqrt(r * r + hc * hc) - hc);
    default: return r * r;
  }
}

template <typename acc_t>
FGL_HOST_DEVICE acc_t diffusion_drho(int64_t loss_type, acc_t r, acc_t hc) {
  switch (loss_type) {
    case kLossL1: return r > acc_t(0) ? acc_t(1) : (r < acc_t(0) ? acc_t(-1) : acc_t(0));
    case kLossHuber: return r < -hc ? -hc : (r > hc ? hc : r);
    case kLossPseudoHuber: return acc_t(2) * hc * r / sqrt(r * r + hc * hc);
    default: return acc_t(2) * r;
  }
}

// Batch reduction: the scale of sample n's weighted loss in the reduced result.
FGL_HOST_DEVICE double diffusion_batch_scale(int64_t reduction, int64_t n_samples) {
  return reduction == kReduceMean ? 1.0 / double(n_samples > 0 ? n_samples : 1) : 1.0;
}

// Per-sample factor of d(loss)/d(input) for that input's coefficient k (a, b or c): sample n's
// loss is batch_scale * w * uw * mean_j rho(r), with uw the caller's weight (1 if none).
// Both backends round it to the accumulation type once, so the gradient the forward writes and
// the one the backward recomputes agree bit for bit.
FGL_HOST_DEVICE double diffusion_grad_factor(double k, double w, double uw, int64_t m,
                                             double batch_scale) {
  return k * w * uw * batch_scale / double(m > 0 ? m : 1);
}

// Noising coefficients: out = p*sample + q*noise.
struct MixCoef {
  double p, q;
};

FGL_HOST_DEVICE MixCoef mix_coef(int64_t kind, double v) {
  switch (kind) {
    case kMixAddNoise: return MixCoef{sqrt(v), sqrt(1.0 - v)};
    case kMixVelocity: return MixCoef{-sqrt(1.0 - v), sqrt(v)};
    case kMixFlow: return MixCoef{1.0 - v, v};
    default: return MixCoef{1.0, v};  // EDM
  }
}

}  // namespace fastgenloss
