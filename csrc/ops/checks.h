// The input rules of the engine's ops, one function an op. Every implementation (ops/cpu/,
// ops/reference.cpp, a device's own) calls its op's check before it reads anything, so each
// rule and its message are written once for all devices.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace seq2seq {
namespace checks {

// Shapes, dtypes and devices (every tensor on the query's or logits' device) always; the
// values of lengths and sentence where they are on the CPU. On another device reading them
// would stop the device for every call: there the engine, which builds them, answers for them.
void attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& memory, const at::Tensor& lengths,
               const at::Tensor& sentence, const std::optional<at::Tensor>& v);
void multi_head_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                          const at::Tensor& lengths, const std::optional<at::Tensor>& sentence, int64_t heads);
void add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
                    const at::Tensor& bias, double eps);
void beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores, const at::Tensor& eos_rule,
                     at::IntArrayRef banned, int64_t eos, int64_t group, int64_t count);

}  // namespace checks
}  // namespace seq2seq
