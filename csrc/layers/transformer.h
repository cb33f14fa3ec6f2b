// The Transformer's layers: embeddings with positions, layer norm, feed-forward and
// multi-head attention, each over a whole sequence (the encoder, once per batch) and over
// one position per row (a decode step, with the key/value cache kept in the State).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <utility>

#include "dense.h"

namespace seq2seq {

// The position table of seq2seq.models.sinusoidal_positions, computed the same way.
at::Tensor sinusoidal_positions(int64_t n, int64_t d);

struct Embeddings {
  at::Tensor scaled, positions;  // (vocabulary, d): the embeddings times sqrt(d) or as they are; (max positions, d)
  Embeddings() = default;
  // The scaling done once: the same float32 products as at every lookup.
  Embeddings(const at::Tensor& table, const at::Tensor& positions, bool scale)
      : scaled(scale ? table * std::sqrt(static_cast<double>(table.size(1))) : table), positions(positions) {}
  // scaled[ids] + positions[start + t], ids (N, T) -> (N, T, d).
  at::Tensor operator()(const at::Tensor& ids, int64_t start) const;
};

struct LayerNorm {
  at::Tensor weight, bias;
  LayerNorm() = default;
  LayerNorm(WeightReader& w, const std::string& prefix, int64_t d);
  at::Tensor operator()(const at::Tensor& x) const;
  // (x + residual, norm(x + residual)) in one pass: a residual sublayer's end.
  std::pair<at::Tensor, at::Tensor> add(const at::Tensor& x, const at::Tensor& residual) const;
};

// seq2seq.models.ACTIVATIONS: ReLU, GELU (the exact, erf one) and swish (SiLU).
enum class Activation { Relu, Gelu, Swish };
// model.activation's value; std::invalid_argument naming the choices otherwise.
Activation parse_activation(const std::string& name);

struct FeedForward {
  Dense inner, outer;  // d -> ff_dim, the activation, ff_dim -> d
  Activation activation = Activation::Relu;
  FeedForward() = default;
  FeedForward(WeightReader& w, const std::string& prefix, int64_t d, int64_t ff_dim, ComputeType type,
              Activation activation);
  at::Tensor operator()(const at::Tensor& x) const;
};

class MultiHeadAttention {
 public:
  // What the layer attends to decides which products it prepares in the compute type.
  enum class Role { Encoder, DecoderSelf, DecoderCross };
  MultiHeadAttention() = default;
  // prefix names nn.Module seq2seq.models.MultiHeadAttention's tensors ({q,k,v,out}_proj).
  MultiHeadAttention(WeightReader& w, const std::string& prefix, int64_t d, int64_t heads, ComputeType type,
                     Role role);

  // Every position of x (N, S, d) against the first lengths[n] positions of its sentence n:
  // one product for the queries, keys and values, then the fused attention op with one query
  // row per position (sentence (N * S) holds each row's n).
  at::Tensor sequence(const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& sentence) const;

  // Self-attention of decode step `step`: x (R, d); the cache keys/values (R, capacity, d)
  // gets this position (its capacity doubled when full); lengths (R) holds step + 1.
  at::Tensor step_self(const at::Tensor& x, at::Tensor& keys, at::Tensor& values, int64_t step,
                       const at::Tensor& lengths) const;

  // The source's keys and values (N, S, d), heads side by side, computed once per batch.
  std::pair<at::Tensor, at::Tensor> source_keys_values(const at::Tensor& memory) const;
  // Cross-attention of a decode step: x (R, d) against the source of each row's sentence.
  // Returns the output (R, d) and the weights (R, heads, S).
  std::pair<at::Tensor, at::Tensor> step_cross(const at::Tensor& x, const at::Tensor& keys, const at::Tensor& values,
                                               const at::Tensor& lengths, const at::Tensor& sentence) const;

 private:
  int64_t d_ = 0, heads_ = 0;
  // All in the model's compute type, the encoder's too (as CTranslate2 runs it): at batch 1
  // the encoder reads as many weight bytes as two decode steps.
  Dense qkv_, query_, key_value_, out_;
};

}  // namespace seq2seq
