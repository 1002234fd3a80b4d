// The Lovász losses' math (Berman, Triki, Blaschko 2018; smp's LovaszLoss), shared by the CPU
// kernel (lovasz.cpp) and the device path.
//
// One "problem" is a set of elements with errors e_i and foreground flags: a class over the
// batch (or over one image) for the Lovász-softmax, e_i = |fg_i - p_ic|; all elements of the
// batch (or of one image) for the Lovász hinge, e_i = 1 - z_i (2 t_i - 1). With the errors sorted
// in decreasing order (ties in element order: a stable sort, so the gradient is deterministic;
// the loss itself does not depend on how ties are ordered), the loss is
//     sum_k f(e_(k)) g_k,   g_k = J_k - J_(k-1),   J_k = 1 - (G - F_k) / (G + B_k),
// G the foreground count, F_k / B_k the foreground / background counts among the first k+1
// (f = identity for the softmax, relu for the hinge). Its gradient to e_(k) is g_k (times
// relu' for the hinge): g depends on the order only.
#pragma once

#include "core/host_device.h"

namespace fastgenloss {

// J_k of the sorted prefix (counts in double: exact to 2^53 elements).
FGL_HOST_DEVICE double lovasz_jaccard(double fg_total, double fg_prefix, double bg_prefix) {
  return 1.0 - (fg_total - fg_prefix) / (fg_total + bg_prefix);
}

// The Lovász-softmax error of class probability p at an element whose foreground flag is fg,
// and its derivative d e / d p.
template <typename acc_t>
FGL_HOST_DEVICE acc_t lovasz_softmax_error(acc_t p, bool fg) { return fg ? acc_t(1) - p : p; }
template <typename acc_t>
FGL_HOST_DEVICE acc_t lovasz_softmax_derror(bool fg) { return fg ? acc_t(-1) : acc_t(1); }

// The hinge error of logit z against target t (smp's 1 - z (2 t - 1): t in {0, 1} is a mask;
// a soft t enters the counts with weight t as foreground, 1 - t as background), and d e / d z.
template <typename acc_t>
FGL_HOST_DEVICE acc_t lovasz_hinge_error(acc_t z, acc_t t) { return acc_t(1) - z * (acc_t(2) * t - acc_t(1)); }
template <typename acc_t>
FGL_HOST_DEVICE acc_t lovasz_hinge_derror(acc_t t) { return acc_t(1) - acc_t(2) * t; }

// Lovász modes (the segmentation modes' codes, segmentation/math.h: binary and multilabel take
// the hinge over all their elements, multiclass the softmax per class).
enum LovaszKind : int { kLovaszHinge = 0, kLovaszSoftmax = 1 };

}  // namespace fastgenloss
