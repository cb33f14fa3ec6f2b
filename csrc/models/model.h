// The model-step interface the search drives (CTranslate2's layers::Decoder, Marian's Scorer):
//
//   State s = model.encode(sources);                  // once per batch
//   Step out = model.step(i, previous_ids, s);        // logits (rows, vocab) for token i
//   reorder(s, rows);                                 // the beams moved, finished rows left
//
// A model keeps whatever it needs between steps in the State's two name -> tensor maps, so
// the search reorders every family's state with one generic gather.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "../layers/dense.h"
#include "../layers/transformer.h"


namespace seq2seq {

using TensorMap = std::map<std::string, at::Tensor>;

struct State {
  TensorMap rows;     // first dimension: the (sentence x beam) row; follows the beams
  // (rows, capacity, ...) caches that grow by a position per step: rows as above, and only
  // the first `cached` positions hold values, so only they follow the beams.
  TensorMap caches;
  int64_t cached = 0;
  TensorMap sources;  // first dimension: the sentence; a row finds its own through rows["sentence"]
};

// Keeps the given rows of every tensor in state.rows and state.caches (repeating or
// reordering them).
void reorder(State& state, const at::Tensor& rows);

struct Step {
  at::Tensor logits;     // (rows, target vocabulary), float32
  at::Tensor attention;  // (rows, source length) or (rows, heads, source length); undefined without
};

class Model {
 public:
  virtual ~Model() = default;
  // Sources are token ids without <eos>; encode appends it. rows["sentence"] starts as 0..N-1.
  virtual State encode(const std::vector<std::vector<int64_t>>& sources) const = 0;
  // The logits of the token at output position `step` (0 for the first) given the previous
  // token of every row (<bos> at step 0).
  virtual Step step(int64_t step, const at::Tensor& previous, State& state) const = 0;
  // The longest source (in tokens, without <eos>) the model reads, or 0 for no limit.
  virtual int64_t max_source_length() const { return 0; }

  std::string family;
  int64_t source_vocabulary = 0, target_vocabulary = 0;
  at::TensorOptions options = at::TensorOptions().dtype(at::kFloat);  // float32 on the weights' device
};

// The model a config.json "model" object describes (every field of seq2seq.config.ModelConfig,
// no more and no fewer), built from its state_dict tensors (on the host), its weights moved
// to `device` once: the only place that reads the model configuration. Throws
// std::invalid_argument naming a bad field or tensor.
std::unique_ptr<Model> create_model(const std::string& model_config_json, const Weights& weights,
                                    ComputeType compute_type, const at::Device& device = at::kCPU);
// What create_model checks first: every field present, known and of its type; else
// std::invalid_argument naming the field (io/export_reader.cpp adds the file).
void check_model_config(const nlohmann::json& model);
// A config.json field of the wrong type, in seq2seq/export.py's words:
// "model.hidden" must be an integer, not "256"; correct it, or export the checkpoint again ...
std::string json_type_error(const std::string& where, const nlohmann::json& value, const char* kind);

// The sources as the encoders read them, on the host: ids (N, S) padded with <pad>, each
// followed by <eos>, and lengths (N) counting the <eos>.
std::pair<at::Tensor, at::Tensor> source_ids(const std::vector<std::vector<int64_t>>& sources);

// The pointer-generator's step distribution (seq2seq/models.py copy_mixture), models/copy.cpp:
// log(p_gen P_vocab + (1 - p_gen) P_copy) with p_gen = sigmoid(gate) (rows, 1), P_vocab the
// softmax of logits (rows, V) and P_copy the attention weights (rows, S) summed per source
// token id, ids (rows, S). Log-probabilities are logits the search's log-softmax leaves as they are.
at::Tensor copy_mixture(const at::Tensor& logits, const at::Tensor& gate, const at::Tensor& weights,
                        const at::Tensor& ids);

// The families (models/rnn.cpp, models/transformer.cpp). Config values are read by the factory.
struct RnnConfig {
  std::string family, cell, attention;
  int64_t src_vocab, tgt_vocab, emb_dim, hidden, layers, attention_dim;
  bool bidirectional, context_feed, input_feed;
  bool copy;  // attention: the pointer-generator of seq2seq/models.py (copy_mixture)
};
std::unique_ptr<Model> create_rnn(const RnnConfig& cfg, WeightReader& weights, ComputeType type);

struct TransformerConfig {
  int64_t src_vocab, tgt_vocab, d_model, heads, ff_dim, enc_layers, dec_layers, max_positions;
  bool pre_norm, learned_positions, tie_embeddings;
  bool copy;  // the pointer-generator over the last layer's cross-attention, its heads averaged
  Activation activation;  // the feed-forward's
  bool scale_embeddings;  // embeddings times sqrt(d_model)
};
std::unique_ptr<Model> create_transformer(const TransformerConfig& cfg, WeightReader& weights, ComputeType type);

}  // namespace seq2seq
