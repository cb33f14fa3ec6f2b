// The CUDA kernels' bodies (ops/cuda/*.cuh) run on the host through simt_host.h, against the
// CPU ops on awkward sizes. ctest runs this build and, where the compiler has them, builds
// under ThreadSanitizer and AddressSanitizer (CMakeLists.txt): a missing barrier is a race,
// a read past a row an overflow.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ops/cuda/layer_norm.cuh"
#include "ops/cuda/simt_host.h"
#include "ops/ops.h"

namespace seq2seq {
namespace {

using simt::Host;

struct LayerNormCase {
  int64_t rows, d;
  bool residual;
  int threads;
};

class AddLayerNorm : public ::testing::TestWithParam<LayerNormCase> {};

TEST_P(AddLayerNorm, MatchesTheCpuOp) {
  const auto c = GetParam();
  at::manual_seed(c.d);
  const auto x = at::randn({c.rows, c.d}) * 5 + 20, residual = at::randn({c.rows, c.d});
  const auto weight = at::randn({c.d}), bias = at::randn({c.d});
  const auto [want_sum, want] =
      add_layer_norm(x, c.residual ? std::optional<at::Tensor>(residual) : std::nullopt, weight, bias, 1e-5);
  auto sum = c.residual ? at::empty_like(x) : x, normed = at::empty_like(x);
  simt::run_on_host(static_cast<int>(c.rows), c.threads, sizeof(double) * (c.threads / simt::kWarp),
                    [&](const Host& h) {
                      simt::add_layer_norm_body(h, x.data_ptr<float>(),
                                                c.residual ? residual.data_ptr<float>() : nullptr,
                                                weight.data_ptr<float>(), bias.data_ptr<float>(), 1e-5, c.d,
                                                sum.data_ptr<float>(), normed.data_ptr<float>());
                    });
  EXPECT_TRUE(at::equal(sum, want_sum));
  EXPECT_TRUE(at::allclose(normed, want, 1e-5, 2e-5)) << (normed - want).abs().max().item<float>();
}

// Rows of one value, of fewer values than threads, of a width no block divides.
INSTANTIATE_TEST_SUITE_P(Sizes, AddLayerNorm,
                         ::testing::Values(LayerNormCase{1, 2, true, 32}, LayerNormCase{3, 31, false, 64},
                                           LayerNormCase{5, 515, true, 128}, LayerNormCase{2, 1024, true, 256}));

}  // namespace
}  // namespace seq2seq
