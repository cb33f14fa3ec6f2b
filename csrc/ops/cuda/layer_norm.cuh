// add_layer_norm's body (ops/ops.h): one block a row. The moments in double, two passes over
// the row as the CPU kernel makes them, and the CPU kernel's form of the result, so the two
// agree to float rounding.
#pragma once

#include <cmath>

#include "simt.h"

namespace seq2seq {
namespace simt {

// Shared memory: a double per warp.
template <class Simt>
SIMT_FN void add_layer_norm_body(const Simt& simt, const float* x, const float* residual, const float* weight,
                                 const float* bias, double eps, int64_t d, float* sum, float* normed) {
  const int64_t row = simt.block(), step = simt.threads();
  const float* xr = x + row * d;
  // Without a residual the sum is x itself (the caller passes sum == x).
  float* s = residual ? sum + row * d : const_cast<float*>(xr);
  double* scratch = simt.template shared<double>();
  double part = 0.0;
  for (int64_t j = simt.thread(); j < d; j += step) {
    const float v = residual ? xr[j] + residual[row * d + j] : xr[j];
    if (residual) s[j] = v;
    part += v;
  }
  const double mean = block_sum(simt, part, scratch) / static_cast<double>(d);
  part = 0.0;
  for (int64_t j = simt.thread(); j < d; j += step) {
    const double c = static_cast<double>(residual ? s[j] : xr[j]) - mean;
    part += c * c;
  }
  const double var = block_sum(simt, part, scratch) / static_cast<double>(d);
  const double rstd = 1.0 / sqrt(var + eps);
  const float scale = static_cast<float>(rstd), shift = static_cast<float>(-mean * rstd);
  float* y = normed + row * d;
  for (int64_t j = simt.thread(); j < d; j += step) y[j] = ((residual ? s[j] : xr[j]) * scale + shift) * weight[j] + bias[j];
}

}  // namespace simt
}  // namespace seq2seq
