// The C++ translation engine: the RNN encoder-decoder families of seq2seq/models.py with
// greedy and batched beam search following the rules of seq2seq/decoding.py exactly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace seq2seq {

constexpr int64_t kPad = 0, kUnk = 1, kBos = 2, kEos = 3;

// The ModelConfig fields the RNN families use (config.json's "model").
struct ModelSpec {
  std::string family = "attention";  // "rnn" or "attention"
  std::string cell = "lstm";         // "lstm" or "gru"
  std::string attention = "bahdanau";  // "bahdanau", "dot", "general", "concat"
  int64_t src_vocab = 0, tgt_vocab = 0, emb_dim = 0, hidden = 0, layers = 1, attention_dim = 0;
  bool bidirectional = false, context_feed = false, input_feed = true;
};

// DecodingOptions of config.py, field for field.
struct DecodeOptions {
  int64_t beam_size = 5, n_best = 1;
  std::string length_penalty = "none";  // "none", "gnmt" or "average"
  double alpha = 0.6;
  int64_t min_length = 0;
  double min_length_ratio = 0.0;
  int64_t max_length = 256;
  double max_length_ratio = 2.0;
  int64_t max_length_extra = 10;
  bool early_stop = true, return_attention = false;
};

struct Hypothesis {
  std::vector<int64_t> tokens;  // without <bos> and <eos>
  double score = 0.0;           // log_prob after the length penalty
  double log_prob = 0.0;        // summed log-probabilities, <eos> included
  std::optional<at::Tensor> attention;  // (tokens + 1, source tokens + 1)
};

using Weights = std::map<std::string, at::Tensor>;

// Throws std::invalid_argument naming the problem.
void validate_options(const DecodeOptions& opts);

class Engine {
 public:
  // Weights are the state_dict tensors of the model (float32); they are checked against
  // the spec here. threads > 0 sets the intra-op thread count of the process.
  // compute_type "float32" decodes with the weights as given (the parity reference);
  // "int8" quantizes the decoder's matrices per output channel (kernels.h: pack_int8).
  Engine(ModelSpec spec, const Weights& weights, int64_t threads = 0, const std::string& compute_type = "float32");

  // Sources are token ids without the appended <eos>; every sentence must be non-empty.
  std::vector<std::vector<Hypothesis>> translate(const std::vector<std::vector<int64_t>>& sources,
                                                 const DecodeOptions& opts) const;
  const ModelSpec& spec() const { return spec_; }
  const std::string& compute_type() const { return compute_type_; }

 private:
  // A linear layer: its weight transposed to (in, out) in float32 (and packed for oneDNN,
  // for products of several rows), or packed in int8.
  struct Dense {
    at::Tensor wt, b, onednn;
    c10::IValue packed;
    bool defined() const { return wt.defined() || !packed.isNone(); }
  };
  struct Layer { Dense ih, hh; };
  // Per-sentence tensors computed once by encode; per-row tensors follow the beams.
  struct Source { at::Tensor memory, keys, lengths, context; };
  struct Rows { at::Tensor h, c, feed, sentence; };  // h, c: (layers, rows, H)

  std::pair<Source, Rows> encode(const std::vector<std::vector<int64_t>>& sources) const;
  // Logits (rows, vocab) for the next token; attention weights (rows, S) when the model has any.
  std::pair<at::Tensor, at::Tensor> step(const at::Tensor& prev, const Source& src, Rows& rows) const;
  at::Tensor cell(const at::Tensor& x, Rows& rows) const;
  void reorder(Rows& rows, const at::Tensor& keep) const;
  std::vector<std::vector<Hypothesis>> greedy(const std::vector<std::vector<int64_t>>& sources,
                                              const DecodeOptions& opts) const;
  std::vector<std::vector<Hypothesis>> beam(const std::vector<std::vector<int64_t>>& sources,
                                            const DecodeOptions& opts) const;
  at::Tensor get(const Weights& w, const std::string& name, std::vector<int64_t> shape, bool any_layout = false) const;
  // A matrix for dense(), in whatever memory layout it came.
  at::Tensor matrix(const Weights& w, const std::string& name, std::vector<int64_t> shape) const;
  Dense dense(const at::Tensor& w, at::Tensor b = at::Tensor()) const;
  at::Tensor apply(const Dense& d, const at::Tensor& x) const;

  ModelSpec spec_;
  std::string compute_type_;
  bool lstm_, luong_, additive_, int8_;
  at::Tensor enc_embed_, dec_embed_, key_w_, v_;
  Dense out_, query_, combine_;
  std::vector<at::Tensor> enc_params_;  // in nn.LSTM/GRU _flat_weights order
  std::vector<Layer> dec_;
};

}  // namespace seq2seq
