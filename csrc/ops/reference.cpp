// The engine's ops in ATen operators, for any device: registered as CompositeExplicitAutograd,
// so a device without a kernel of its own (ops/cpu/ serves the CPU) runs these, and
// ops::ReferenceOps makes the engine run them on the CPU too, where tests compare them with
// the CPU kernels. Written for clarity, not speed: each materializes what a fused kernel streams.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "../common.h"
#include "checks.h"
#include "ops.h"

namespace seq2seq {
namespace reference {

namespace {

// (rows, length) true at the positions before each row's length.
at::Tensor valid_positions(const at::Tensor& row_lengths, int64_t length) {
  return at::arange(length, row_lengths.options()).unsqueeze(0) < row_lengths.unsqueeze(1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& memory,
                                             const at::Tensor& lengths, const at::Tensor& sentence,
                                             const std::optional<at::Tensor>& v) {
  checks::attention(query, keys, memory, lengths, sentence, v);
  const auto k = keys.index_select(0, sentence), m = memory.index_select(0, sentence);  // (R, S, .)
  const auto scores = v.has_value() ? (at::tanh(k + query.unsqueeze(1)) * *v).sum(-1)
                                    : at::bmm(k, query.unsqueeze(-1)).squeeze(-1);
  const auto invalid = valid_positions(lengths.index_select(0, sentence), keys.size(1)).logical_not();
  const auto weights = at::softmax(scores.masked_fill(invalid, kNegInf), -1);
  // Positions past a length are never read by the kernels and may hold anything (a cache's
  // unwritten capacity): zeroed, so that a weight of 0 times them stays 0.
  return {at::bmm(weights.unsqueeze(1), m.masked_fill(invalid.unsqueeze(-1), 0.f)).squeeze(1), weights};
}

std::tuple<at::Tensor, at::Tensor> multi_head_attention(const at::Tensor& query, const at::Tensor& keys,
                                                        const at::Tensor& values, const at::Tensor& lengths,
                                                        const std::optional<at::Tensor>& sentence, int64_t heads) {
  checks::multi_head_attention(query, keys, values, lengths, sentence, heads);
  const int64_t R = query.size(0), D = query.size(1), T = keys.size(1), dh = D / heads;
  const auto block = sentence.has_value() ? *sentence : at::arange(R, lengths.options());
  // (R, heads, T, dh) and (R, heads, dh, 1): one query per row and head.
  const auto k = keys.index_select(0, block).view({R, T, heads, dh}).transpose(1, 2);
  const auto val = values.index_select(0, block).view({R, T, heads, dh}).transpose(1, 2);
  const auto q = query.view({R, heads, dh, 1});
  const float scale = static_cast<float>(std::sqrt(static_cast<double>(dh)));
  const auto scores = at::matmul(k, q).squeeze(-1) / scale;  // (R, heads, T), as q k^T / sqrt(d)
  const auto invalid = valid_positions(lengths.index_select(0, block), T).logical_not().unsqueeze(1);  // (R, 1, T)
  const auto weights = at::softmax(scores.masked_fill(invalid, kNegInf), -1);
  // As in attention: a cache's capacity past its length holds whatever memory held.
  const auto visible = val.masked_fill(invalid.unsqueeze(-1), 0.f);
  const auto context = at::matmul(weights.unsqueeze(2), visible).squeeze(2).reshape({R, D});
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias, double eps) {
  checks::add_layer_norm(x, residual, weight, bias, eps);
  const auto sum = residual.has_value() ? x + *residual : x;
  return {sum, at::layer_norm(sum, {x.size(-1)}, weight, bias, eps)};
}

std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores,
                                                   const at::Tensor& eos_rule, at::IntArrayRef banned, int64_t eos,
                                                   int64_t group, int64_t count) {
  checks::beam_candidates(logits, row_scores, eos_rule, banned, eos, group, count);
  const int64_t R = logits.size(0), V = logits.size(1), blocks = R / group;
  // The CPU kernel's order of operations: row score + ((x - max) - log(sum exp(x - max))).
  const auto shifted = logits - std::get<0>(logits.max(-1, true));
  const auto log_sum = shifted.exp().sum(-1, true).log();
  auto total = row_scores.unsqueeze(1) + (shifted - log_sum);
  // Dead rows (score -inf) have no candidates; whatever their logits, they stay -inf.
  total.masked_fill_(row_scores.unsqueeze(1) == kNegInf, kNegInf);
  if (!banned.empty()) total.index_fill_(1, at::tensor(banned, logits.options().dtype(at::kLong)), kNegInf);
  const auto is_eos = at::arange(V, logits.options().dtype(at::kLong)) == eos;  // (V)
  const auto rule = eos_rule.unsqueeze(1);
  total.masked_fill_((rule == 1).logical_and(is_eos), kNegInf);
  total.masked_fill_((rule == 2).logical_and(is_eos.logical_not()), kNegInf);
  // Token-major within a block, as the index token * group + row; a stable sort keeps equal
  // scores in index order: ties to the lowest token id, then the lowest row.
  const auto flat = total.view({blocks, group, V}).transpose(1, 2).reshape({blocks, V * group});
  auto [sorted, order] = flat.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
  const int64_t kept = std::min(count, V * group);
  auto scores = at::full({blocks, count}, kNegInf, logits.options());
  auto index = at::full({blocks, count}, -1, logits.options().dtype(at::kLong));
  scores.narrow(1, 0, kept).copy_(sorted.narrow(1, 0, kept));
  index.narrow(1, 0, kept).copy_(order.narrow(1, 0, kept));
  index.masked_fill_(scores == kNegInf, -1);
  return {scores, index};
}

}  // namespace reference
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CompositeExplicitAutograd, m) {
  m.impl("attention", &seq2seq::reference::attention);
  m.impl("multi_head_attention", &seq2seq::reference::multi_head_attention);
  m.impl("add_layer_norm", &seq2seq::reference::add_layer_norm);
  m.impl("beam_candidates", &seq2seq::reference::beam_candidates);
}
