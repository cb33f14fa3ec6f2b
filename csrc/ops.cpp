// The engine's kernels as torch ops, registered once: torch.ops.seq2seq.*
#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY(seq2seq, m) {
  m.def("attention(Tensor query, Tensor keys, Tensor memory, Tensor lengths, Tensor sentence, Tensor? v) "
        "-> (Tensor, Tensor)");
  m.def("beam_candidates(Tensor logits, Tensor row_scores, Tensor eos_rule, int[] banned, int eos, int group, "
        "int count) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("attention", &seq2seq::attention);
  m.impl("beam_candidates", &seq2seq::beam_candidates);
}
