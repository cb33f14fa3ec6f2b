// The CUDA kernels' bodies (ops/cuda/*.cuh) run on the host through simt_host.h, against the
// CPU ops on awkward sizes. ctest runs this build and, where the compiler has them, builds
// under ThreadSanitizer and AddressSanitizer (CMakeLists.txt): a missing barrier is a race,
// a read past a row an overflow.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

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

// The layer itself: atomics from every thread of every block, and a block sum whose
// barriers, if missing, let a warp read another's slot before it is written.
TEST(Simt, AtomicsAndBlockSumsCountEveryThread) {
  float total = 0.f;
  int count = 0;
  std::vector<double> sums(3);
  simt::run_on_host(3, 96, sizeof(double) * 3, [&](const Host& h) {
    h.atomic_add(&total, 0.5f);
    h.atomic_add(&count, 1);
    const double sum = simt::block_sum(h, static_cast<double>(h.thread() + 1), h.shared<double>());
    if (h.thread() == 0) sums[h.block()] = sum;
  });
  EXPECT_EQ(total, 0.5f * 3 * 96);
  EXPECT_EQ(count, 3 * 96);
  for (double s : sums) EXPECT_EQ(s, 96.0 * 97.0 / 2.0);
  EXPECT_THROW(simt::run_on_host(1, 48, 0, [](const Host&) {}), std::invalid_argument);
}

}  // namespace
}  // namespace seq2seq
