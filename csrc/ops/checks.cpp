#include "checks.h"

#include <string>

#include "../common.h"

namespace seq2seq {
namespace checks {
namespace {

// Messages built only on failure: add_layer_norm runs eleven times a decode step.
void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim, const at::Device& device) {
  if (t.scalar_type() != dtype)
    check(false, std::string(name) + " must be " + (dtype == at::kFloat ? "float32" : dtype == at::kLong ? "int64" : "int8"));
  if (dim >= 0 && t.dim() != dim) check(false, std::string(name) + " must have " + std::to_string(dim) + " dimensions");
  if (t.device() != device)
    check(false, std::string(name) + " is on " + t.device().str() + ", the other inputs on " + device.str());
}

// Whether the values of t can be read without stopping a device.
bool on_host(const at::Tensor& t) { return t.device().is_cpu(); }

void within(const at::Tensor& t, int64_t low, int64_t high, const char* message) {
  if (!on_host(t) || t.numel() == 0) return;
  const auto c = t.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i) check(p[i] >= low && p[i] <= high, message);
}

}  // namespace

void attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& memory, const at::Tensor& lengths,
               const at::Tensor& sentence, const std::optional<at::Tensor>& v) {
  const auto device = query.device();
  tensor(query, "query", at::kFloat, 2, device);
  tensor(keys, "keys", at::kFloat, 3, device);
  tensor(memory, "memory", at::kFloat, 3, device);
  check(lengths.scalar_type() == at::kLong && lengths.dim() == 1, "lengths must be a 1-d int64 tensor");
  check(sentence.scalar_type() == at::kLong && sentence.dim() == 1, "sentence must be a 1-d int64 tensor");
  tensor(lengths, "lengths", at::kLong, 1, device);
  tensor(sentence, "sentence", at::kLong, 1, device);
  const int64_t R = query.size(0), K = query.size(1), N = keys.size(0), S = keys.size(1);
  check(keys.size(2) == K, "keys' last dimension must equal the query's");
  check(memory.size(0) == N && memory.size(1) == S, "memory must be (sentences, source length, M) like keys");
  check(lengths.size(0) == N, "lengths must have one entry per sentence");
  check(sentence.size(0) == R, "sentence must have one entry per query row");
  if (v.has_value()) {
    tensor(*v, "v", at::kFloat, 1, device);
    check(v->size(0) == K, "v must have the query's size");
  }
  within(lengths, 1, S, "lengths must be within 1..source length");
  within(sentence, 0, N - 1, "sentence ids must be within 0..sentences-1");
}

void multi_head_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                          const at::Tensor& lengths, const std::optional<at::Tensor>& sentence, int64_t heads) {
  const auto device = query.device();
  tensor(query, "query", at::kFloat, 2, device);
  tensor(keys, "keys", at::kFloat, 3, device);
  tensor(values, "values", at::kFloat, 3, device);
  check(lengths.scalar_type() == at::kLong && lengths.dim() == 1, "lengths must be a 1-d int64 tensor");
  tensor(lengths, "lengths", at::kLong, 1, device);
  const int64_t R = query.size(0), D = query.size(1), B = keys.size(0), T = keys.size(1);
  check(heads >= 1 && D % heads == 0, "heads must divide the query's size");
  check(keys.size(2) == D && values.sizes() == keys.sizes(), "keys and values must be (blocks, length, query size)");
  check(lengths.size(0) == B, "lengths must have one entry per block of keys");
  if (sentence.has_value()) {
    check(sentence->scalar_type() == at::kLong && sentence->dim() == 1 && sentence->size(0) == R,
          "sentence must be a 1-d int64 tensor with one entry per query row");
    tensor(*sentence, "sentence", at::kLong, 1, device);
    within(*sentence, 0, B - 1, "sentence ids must be within 0..blocks-1");
  } else {
    check(B == R, "without sentence, keys need one block per query row");
  }
  within(lengths, 1, T, "lengths must be within 1..key length");
}

void add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
                    const at::Tensor& bias, double eps) {
  const auto device = x.device();
  if (x.scalar_type() != at::kFloat || x.dim() < 1) check(false, "x must be a float32 tensor of 1 or more dimensions");
  const int64_t d = x.size(-1);
  tensor(weight, "weight", at::kFloat, 1, device);
  tensor(bias, "bias", at::kFloat, 1, device);
  if (weight.size(0) != d || bias.size(0) != d)
    check(false, "weight and bias must hold x's last dimension (" + std::to_string(d) + ") values");
  check(eps > 0, "eps must be positive");
  if (residual.has_value()) {
    if (residual->scalar_type() != at::kFloat || residual->device() != device || residual->sizes() != x.sizes())
      check(false, "residual must be a float32 tensor of x's shape, on x's device");
  }
}

void beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores, const at::Tensor& eos_rule,
                     at::IntArrayRef banned, int64_t eos, int64_t group, int64_t count) {
  const auto device = logits.device();
  tensor(logits, "logits", at::kFloat, 2, device);
  tensor(row_scores, "row_scores", at::kFloat, 1, device);
  check(eos_rule.scalar_type() == at::kChar && eos_rule.dim() == 1, "eos_rule must be a 1-d int8 tensor");
  tensor(eos_rule, "eos_rule", at::kChar, 1, device);
  const int64_t R = logits.size(0), V = logits.size(1);
  check(group >= 1 && R % group == 0, "rows must be a multiple of group");
  check(count >= 1, "count must be at least 1");
  check(row_scores.size(0) == R && eos_rule.size(0) == R, "row_scores and eos_rule need one entry per row");
  check(eos >= 0 && eos < V, "eos must be a token id");
  for (int64_t b : banned) check(b >= 0 && b < V, "banned token ids must be within the vocabulary");
}

}  // namespace checks
}  // namespace seq2seq
