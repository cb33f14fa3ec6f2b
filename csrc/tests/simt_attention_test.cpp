// The attention bodies (ops/cuda/attention.cuh) on the host against the CPU ops, with NaN in
// keys and values past each length: a score or context that reads one is NaN, and so is any
// output the body leaves unwritten (the outputs start as NaN, shared memory as all bits set).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

#include "ops/cuda/attention.cuh"
#include "ops/cuda/simt_host.h"
#include "ops/ops.h"

namespace seq2seq {
namespace {

using simt::Host;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Lengths within 1..S, the first 1 and the last S.
at::Tensor some_lengths(int64_t n, int64_t S) {
  auto lengths = at::randint(1, S + 1, {n}, at::kLong);
  lengths[0] = 1;
  lengths[n - 1] = S;
  return lengths;
}

// x (N, S, ...) with NaN from each length on.
at::Tensor nan_past(const at::Tensor& x, const at::Tensor& lengths) {
  const auto past = at::arange(x.size(1), at::kLong).unsqueeze(0) >= lengths.unsqueeze(1);
  return x.masked_fill(past.unsqueeze(2), kNaN);
}

void expect_match(const at::Tensor& context, const at::Tensor& weights, const at::Tensor& want_context,
                  const at::Tensor& want_weights) {
  EXPECT_TRUE(at::allclose(weights, want_weights, 0, 1e-6)) << (weights - want_weights).abs().max().item<float>();
  EXPECT_TRUE(at::equal(weights == 0, want_weights == 0));  // exactly zero past the lengths
  EXPECT_TRUE(at::allclose(context, want_context, 1e-5, 1e-5)) << (context - want_context).abs().max().item<float>();
}

struct AttentionCase {
  int64_t R, N, S, K, M;
  bool additive;
  int threads;
};

class Attention : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(Attention, MatchesTheCpuOp) {
  const auto c = GetParam();
  at::manual_seed(c.S * 100 + c.K);
  const auto lengths = some_lengths(c.N, c.S), sentence = at::arange(c.R, at::kLong) % c.N;
  const auto query = at::randn({c.R, c.K}), v = at::randn({c.K});
  const auto keys = nan_past(at::randn({c.N, c.S, c.K}), lengths);
  const auto memory = nan_past(at::randn({c.N, c.S, c.M}), lengths);
  const auto v_or = c.additive ? std::optional<at::Tensor>(v) : std::nullopt;
  const auto [want_context, want_weights] = attention(query, keys, memory, lengths, sentence, v_or);
  auto context = at::full({c.R, c.M}, kNaN), weights = at::full({c.R, c.S}, kNaN);
  simt::run_on_host(static_cast<int>(c.R), c.threads, simt::attention_shared_bytes(c.threads, c.S),
                    [&](const Host& h) {
                      simt::attention_body(h, query.data_ptr<float>(), keys.data_ptr<float>(),
                                           memory.data_ptr<float>(), lengths.data_ptr<int64_t>(),
                                           sentence.data_ptr<int64_t>(), c.additive ? v.data_ptr<float>() : nullptr,
                                           c.K, c.S, c.M, context.data_ptr<float>(), weights.data_ptr<float>());
                    });
  expect_match(context, weights, want_context, want_weights);
}

// A single position; more positions and columns than threads, by no multiple of them; several
// rows a sentence.
INSTANTIATE_TEST_SUITE_P(Sizes, Attention,
                         ::testing::Values(AttentionCase{1, 1, 1, 3, 5, true, 32},
                                           AttentionCase{5, 2, 37, 33, 45, true, 32},
                                           AttentionCase{6, 3, 150, 20, 70, false, 128},
                                           AttentionCase{4, 4, 7, 64, 130, true, 128},
                                           AttentionCase{3, 3, 70, 17, 9, false, 32}));

struct MultiHeadCase {
  int64_t R, B, T, D, heads;
  bool cross;  // rows over blocks by sentence, else one block a row (self-attention)
  int threads;
};

class MultiHeadAttention : public ::testing::TestWithParam<MultiHeadCase> {};

TEST_P(MultiHeadAttention, MatchesTheCpuOp) {
  const auto c = GetParam();
  at::manual_seed(c.T * 100 + c.D);
  const auto lengths = some_lengths(c.B, c.T), sentence = at::arange(c.R, at::kLong) % c.B;
  const auto query = at::randn({c.R, c.D});
  const auto keys = nan_past(at::randn({c.B, c.T, c.D}), lengths);
  const auto values = nan_past(at::randn({c.B, c.T, c.D}), lengths);
  const auto sentence_or = c.cross ? std::optional<at::Tensor>(sentence) : std::nullopt;
  const auto [want_context, want_weights] = multi_head_attention(query, keys, values, lengths, sentence_or, c.heads);
  auto context = at::full({c.R, c.D}, kNaN), weights = at::full({c.R, c.heads, c.T}, kNaN);
  simt::run_on_host(static_cast<int>(c.R * c.heads), c.threads, simt::multi_head_attention_shared_bytes(c.threads, c.T),
                    [&](const Host& h) {
                      simt::multi_head_attention_body(
                          h, query.data_ptr<float>(), keys.data_ptr<float>(), values.data_ptr<float>(),
                          lengths.data_ptr<int64_t>(), c.cross ? sentence.data_ptr<int64_t>() : nullptr, c.D, c.T,
                          c.heads, context.data_ptr<float>(), weights.data_ptr<float>());
                    });
  expect_match(context, weights, want_context, want_weights);
}

// A one-position cache; heads narrower and wider than a warp, none a multiple of 32; more
// positions than threads, by no multiple of them.
INSTANTIATE_TEST_SUITE_P(Sizes, MultiHeadAttention,
                         ::testing::Values(MultiHeadCase{3, 3, 1, 8, 1, false, 32},
                                           MultiHeadCase{4, 4, 45, 60, 4, false, 32},
                                           MultiHeadCase{6, 2, 131, 99, 3, true, 128},
                                           MultiHeadCase{5, 2, 40, 200, 2, true, 32},
                                           MultiHeadCase{2, 1, 33, 70, 1, true, 128}));

}  // namespace
}  // namespace seq2seq
