// The engine's ops, declared once: torch.ops.seq2seq.*. Implementations register per device
// (ops/cpu/*.cpp: TORCH_LIBRARY_IMPL(seq2seq, CPU, m)), and in ATen operators for every
// other device (ops/reference.cpp); the functions below call them through the dispatcher.
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

TORCH_LIBRARY(seq2seq, m) {
  m.def("attention(Tensor query, Tensor keys, Tensor memory, Tensor lengths, Tensor sentence, Tensor? v) "
        "-> (Tensor, Tensor)");
  m.def("multi_head_attention(Tensor query, Tensor keys, Tensor values, Tensor lengths, Tensor? sentence, "
        "int heads) -> (Tensor, Tensor)");
  m.def("add_layer_norm(Tensor x, Tensor? residual, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
  m.def("beam_candidates(Tensor logits, Tensor row_scores, Tensor eos_rule, int[] banned, int eos, int group, "
        "int count) -> (Tensor, Tensor)");
  // The engine's oneDNN product, packing the weight at every call: for tests.
  m.def("linear_onednn(Tensor x, Tensor weight, Tensor? bias, bool relu=False) -> Tensor");
  // The engine's int8 product of a few rows, for tests and benchmarks: float32 weights are
  // quantized per output channel at the call, int8 weights come with their scales.
  m.def("linear_int8_rows(Tensor x, Tensor weight, Tensor? scale, Tensor? bias) -> Tensor");
  // The engine's float32 and bfloat16 products of a few rows, for tests and benchmarks: weight
  // is float32 (out, in) as nn.Linear's, packed into the kernel's panels (and rounded to
  // bfloat16) at the call, where the engine packs it once.
  m.def("linear_float_rows(Tensor x, Tensor weight, Tensor? bias, bool relu=False) -> Tensor");
  m.def("linear_bf16_rows(Tensor x, Tensor weight, Tensor? bias, bool relu=False) -> Tensor");
}

namespace seq2seq {
namespace {

thread_local bool reference_ops = false;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

ReferenceOps::ReferenceOps(bool on) : previous_(reference_ops) { reference_ops = on; }
ReferenceOps::~ReferenceOps() { reference_ops = previous_; }
bool ReferenceOps::active() { return reference_ops; }

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query, const at::Tensor& keys,
                                             const at::Tensor& memory, const at::Tensor& lengths,
                                             const at::Tensor& sentence, const std::optional<at::Tensor>& v) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const std::optional<at::Tensor>&)>("seq2seq::attention");
  if (reference_ops) return reference::attention(query, keys, memory, lengths, sentence, v);
  return handle.call(query, keys, memory, lengths, sentence, v);
}

std::tuple<at::Tensor, at::Tensor> multi_head_attention(const at::Tensor& query, const at::Tensor& keys,
                                                        const at::Tensor& values, const at::Tensor& lengths,
                                                        const std::optional<at::Tensor>& sentence, int64_t heads) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      int64_t)>("seq2seq::multi_head_attention");
  if (reference_ops) return reference::multi_head_attention(query, keys, values, lengths, sentence, heads);
  return handle.call(query, keys, values, lengths, sentence, heads);
}

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias, double eps) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double)>(
      "seq2seq::add_layer_norm");
  if (reference_ops) return reference::add_layer_norm(x, residual, weight, bias, eps);
  return handle.call(x, residual, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores,
                                                   const at::Tensor& eos_rule, at::IntArrayRef banned,
                                                   int64_t eos, int64_t group, int64_t count) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, int64_t, int64_t, int64_t)>(
      "seq2seq::beam_candidates");
  if (reference_ops) return reference::beam_candidates(logits, row_scores, eos_rule, banned, eos, group, count);
  return handle.call(logits, row_scores, eos_rule, banned, eos, group, count);
}

}  // namespace seq2seq
