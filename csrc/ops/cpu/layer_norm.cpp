// The residual sum and layer norm of a Transformer sublayer in one pass per row. A decode
// step runs eleven of them (3 layers) on one to a few rows, where ATen's add and layer_norm
// cost more in dispatch, TensorIterator set-up and three allocations than in arithmetic.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "vec.h"

namespace seq2seq {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x_in, const std::optional<at::Tensor>& residual_in,
                                                  const at::Tensor& weight_in, const at::Tensor& bias_in, double eps) {
  checks::add_layer_norm(x_in, residual_in, weight_in, bias_in, eps);
  const int64_t d = x_in.size(-1), rows = d > 0 ? x_in.numel() / d : 0;
  const auto x = x_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  // Without a residual the sum is x itself: no copy.
  auto sum = residual.defined() ? at::empty_like(x) : x;
  auto normed = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *rp = residual.defined() ? residual.data_ptr<float>() : nullptr;
  const float *g = weight.data_ptr<float>(), *b = bias.data_ptr<float>();
  float *sp = sum.data_ptr<float>(), *np = normed.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * d;
      float* s = sp + r * d;
      if (rp)
        for (int64_t j = 0; j < d; ++j) s[j] = xr[j] + rp[r * d + j];
      // The moments in double: two passes, exact to float precision whatever d.
      const double mean = sum_double<1>(s, d, 0.0) / static_cast<double>(d);
      const double var = sum_double<2>(s, d, mean) / static_cast<double>(d);
      const double rstd = 1.0 / std::sqrt(var + eps);
      // ATen's form: (x * rstd - mean * rstd) * weight + bias.
      const float scale = static_cast<float>(rstd), shift = static_cast<float>(-mean * rstd);
      float* y = np + r * d;
      int64_t j = 0;
      for (; j + kLanes <= d; j += kLanes) {
        const vfloat v = (load_lanes(s + j) * scale + shift) * load_lanes(g + j) + load_lanes(b + j);
        std::memcpy(y + j, &v, sizeof v);
      }
      for (; j < d; ++j) y[j] = (s[j] * scale + shift) * g[j] + b[j];
    }
  });
  return {sum, normed};
}

}  // namespace
}  // namespace cpu
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) { m.impl("add_layer_norm", &seq2seq::cpu::add_layer_norm); }
