#include "transformer.h"

#include <cmath>

#include "../common.h"
#include "../ops/ops.h"

namespace seq2seq {

at::Tensor sinusoidal_positions(int64_t n, int64_t d) {
  const auto pos = at::arange(n, at::kFloat).unsqueeze(1);
  const auto freq = at::exp(at::arange(0, d, 2, at::kFloat) * (-std::log(10000.0) / static_cast<double>(d)));
  auto table = at::zeros({n, d}, at::kFloat);
  table.slice(1, 0, d, 2).copy_(at::sin(pos * freq));
  table.slice(1, 1, d, 2).copy_(at::cos(pos * freq.slice(0, 0, d / 2)));
  return table;
}

at::Tensor Embeddings::operator()(const at::Tensor& ids, int64_t start) const {
  const int64_t T = ids.size(-1);
  return at::embedding(scaled, ids) + positions.slice(0, start, start + T);
}

LayerNorm::LayerNorm(WeightReader& w, const std::string& prefix, int64_t d)
    : weight(w.get(prefix + ".weight", {d})), bias(w.get(prefix + ".bias", {d})) {}

at::Tensor LayerNorm::operator()(const at::Tensor& x) const {
  return std::get<1>(add_layer_norm(x, std::nullopt, weight, bias, 1e-5));
}

std::pair<at::Tensor, at::Tensor> LayerNorm::add(const at::Tensor& x, const at::Tensor& residual) const {
  auto [sum, normed] = add_layer_norm(x, residual, weight, bias, 1e-5);
  return {sum, normed};
}

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "swish") return Activation::Swish;
  throw std::invalid_argument("model.activation must be relu, gelu or swish, not " + name);
}

FeedForward::FeedForward(WeightReader& w, const std::string& prefix, int64_t d, int64_t ff_dim, ComputeType type,
                         Activation activation)
    : inner(w.dense(prefix + ".0.weight", prefix + ".0.bias", ff_dim, d, type)),
      outer(w.dense(prefix + ".3.weight", prefix + ".3.bias", d, ff_dim, type)),
      activation(activation) {}

at::Tensor FeedForward::operator()(const at::Tensor& x) const {
  const auto flat = x.dim() == 2 ? x : x.reshape({-1, x.size(-1)});
  at::Tensor hidden = activation == Activation::Relu ? inner.relu(flat) : inner(flat);  // ReLU: in the kernel
  if (activation == Activation::Gelu) at::gelu_(hidden);
  if (activation == Activation::Swish) at::silu_(hidden);
  const auto y = outer(hidden);
  return x.dim() == 2 ? y : y.view(x.sizes());
}

MultiHeadAttention::MultiHeadAttention(WeightReader& w, const std::string& prefix, int64_t d, int64_t heads,
                                       ComputeType type, Role role)
    : d_(d), heads_(heads) {
  auto get = [&](const char* name, bool matrix) {
    return w.get(prefix + "." + name, matrix ? std::vector<int64_t>{d, d} : std::vector<int64_t>{d});
  };
  const auto wq = get("q_proj.weight", true), bq = get("q_proj.bias", false);
  const auto wk = get("k_proj.weight", true), bk = get("k_proj.bias", false);
  const auto wv = get("v_proj.weight", true), bv = get("v_proj.bias", false);
  const auto wo = get("out_proj.weight", true), bo = get("out_proj.bias", false);
  // Self-attention: one product for the queries, keys and values.
  if (role != Role::DecoderCross) qkv_ = Dense(at::cat({wq, wk, wv}), at::cat({bq, bk, bv}), type);
  else query_ = Dense(wq, bq, type), key_value_ = Dense(at::cat({wk, wv}), at::cat({bk, bv}), type);
  out_ = Dense(wo, bo, type);
}

at::Tensor MultiHeadAttention::sequence(const at::Tensor& x, const at::Tensor& lengths,
                                        const at::Tensor& sentence) const {
  const int64_t N = x.size(0), S = x.size(1);
  const auto qkv = qkv_(x.reshape({N * S, d_})).view({N, S, 3 * d_});
  const auto queries = qkv.narrow(2, 0, d_).reshape({N * S, d_});
  const auto [context, weights] = multi_head_attention(queries, qkv.narrow(2, d_, d_), qkv.narrow(2, 2 * d_, d_),
                                                       lengths, sentence, heads_);
  return out_(context).view({N, S, d_});
}

namespace {

// Writes position `step` of a cache (R, capacity, d), first doubling its capacity when full:
// a copy of the cache every few steps rather than at every one (at::cat's way).
void write_position(at::Tensor& cache, const at::Tensor& position, int64_t step) {
  const int64_t capacity = cache.size(1);
  if (capacity <= step) {
    auto grown = at::empty({cache.size(0), std::max({step + 1, 2 * capacity, int64_t{16}}), cache.size(2)},
                           cache.options());
    grown.narrow(1, 0, capacity).copy_(cache);
    cache = grown;
  }
  cache.select(1, step).copy_(position);
}

}  // namespace

at::Tensor MultiHeadAttention::step_self(const at::Tensor& x, at::Tensor& keys, at::Tensor& values, int64_t step,
                                         const at::Tensor& lengths) const {
  const auto qkv = qkv_(x).chunk(3, 1);
  write_position(keys, qkv[1], step);
  write_position(values, qkv[2], step);
  const auto [context, weights] = multi_head_attention(qkv[0], keys, values, lengths, std::nullopt, heads_);
  return out_(context);
}

std::pair<at::Tensor, at::Tensor> MultiHeadAttention::source_keys_values(const at::Tensor& memory) const {
  const int64_t N = memory.size(0), S = memory.size(1);
  const auto kv = key_value_(memory.reshape({N * S, d_})).view({N, S, 2 * d_}).chunk(2, 2);
  return {kv[0].contiguous(), kv[1].contiguous()};
}

std::pair<at::Tensor, at::Tensor> MultiHeadAttention::step_cross(const at::Tensor& x, const at::Tensor& keys,
                                                                 const at::Tensor& values, const at::Tensor& lengths,
                                                                 const at::Tensor& sentence) const {
  const auto [context, weights] = multi_head_attention(query_(x), keys, values, lengths, sentence, heads_);
  return {out_(context), weights};
}

}  // namespace seq2seq
