// The engine's kernels as torch ops, registered once: torch.ops.seq2seq.*
#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY(seq2seq, m) {
  m.def("attention(Tensor query, Tensor keys, Tensor memory, Tensor lengths, Tensor sentence, Tensor? v) "
        "-> (Tensor, Tensor)");
  m.def("beam_candidates(Tensor logits, Tensor row_scores, Tensor eos_rule, int[] banned, int eos, int group, "
        "int count) -> (Tensor, Tensor)");
  // The engine's oneDNN product, packing the weight at every call: for tests.
  m.def("linear_onednn(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

namespace {

at::Tensor linear_onednn_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const auto packed = seq2seq::pack_onednn(weight);
  TORCH_CHECK(packed.defined(), "this torch build has no oneDNN");
  return seq2seq::linear_onednn(x, packed, bias.value_or(at::Tensor()));
}

}  // namespace

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("attention", &seq2seq::attention);
  m.impl("beam_candidates", &seq2seq::beam_candidates);
  m.impl("linear_onednn", &linear_onednn_op);
}
