#include "model.h"

namespace seq2seq {

constexpr double kCopyFloor = 1e-30;  // seq2seq/models.py COPY_FLOOR

at::Tensor copy_mixture(const at::Tensor& logits, const at::Tensor& gate, const at::Tensor& weights,
                        const at::Tensor& ids) {
  auto copied = at::zeros_like(logits).scatter_add_(1, ids, weights);
  return at::logaddexp(at::log_sigmoid(gate) + at::log_softmax(logits, -1),
                       at::log_sigmoid(-gate) + at::log(copied.clamp_min(kCopyFloor)));
}

}  // namespace seq2seq
