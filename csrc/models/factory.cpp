// config.json's "model" object -> the model: the one place that reads the model configuration.
#include <nlohmann/json.hpp>

#include "../common.h"
#include "model.h"

namespace seq2seq {
namespace {

using json = nlohmann::json;

// Every field of seq2seq.config.ModelConfig: an export holds them all, and nothing else.
const char* const kFields[] = {"family", "src_vocab", "tgt_vocab", "dropout", "cell", "emb_dim", "hidden", "layers",
                               "bidirectional", "context_feed", "attention", "attention_dim", "input_feed", "d_model",
                               "heads", "ff_dim", "enc_layers", "dec_layers", "norm", "positions", "max_positions",
                               "tie_embeddings"};

template <typename T>
T field(const json& m, const char* key) {
  try {
    return m.at(key).get<T>();
  } catch (const json::exception&) {
    throw std::invalid_argument(std::string("model.") + key + " has the wrong type (" + m.at(key).dump() + ")");
  }
}

}  // namespace

std::unique_ptr<Model> create_model(const std::string& model_config_json, const Weights& weights,
                                    ComputeType compute_type) {
  json m;
  try {
    m = json::parse(model_config_json);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(std::string("the model configuration is malformed JSON (") + e.what() + ")");
  }
  check(m.is_object(), "the model configuration must be a JSON object of ModelConfig fields");
  for (const char* key : kFields)
    check(m.contains(key), std::string("the model configuration lacks model.") + key +
                               ": export the checkpoint again with this seq2seq");
  for (const auto& [key, _] : m.items()) {
    bool known = false;
    for (const char* k : kFields) known = known || key == k;
    check(known, "the model configuration has model." + key +
                     ", which this engine does not know: the export needs a newer engine");
  }
  const auto family = field<std::string>(m, "family");
  const auto src_vocab = field<int64_t>(m, "src_vocab"), tgt_vocab = field<int64_t>(m, "tgt_vocab");
  check(src_vocab > kEos + 1 && tgt_vocab > kEos + 1, "model.src_vocab and tgt_vocab must be above 4");
  if (family == "rnn" || family == "attention") {
    RnnConfig c{family, field<std::string>(m, "cell"), field<std::string>(m, "attention"), src_vocab, tgt_vocab,
                field<int64_t>(m, "emb_dim"), field<int64_t>(m, "hidden"), field<int64_t>(m, "layers"),
                field<int64_t>(m, "attention_dim"), field<bool>(m, "bidirectional"), field<bool>(m, "context_feed"),
                field<bool>(m, "input_feed")};
    return create_rnn(c, weights, compute_type);
  }
  if (family == "transformer") {
    const auto norm = field<std::string>(m, "norm"), positions = field<std::string>(m, "positions");
    check(norm == "pre" || norm == "post", "model.norm must be pre or post, not " + norm);
    check(positions == "sinusoidal" || positions == "learned",
          "model.positions must be sinusoidal or learned, not " + positions);
    TransformerConfig c{src_vocab, tgt_vocab, field<int64_t>(m, "d_model"), field<int64_t>(m, "heads"),
                        field<int64_t>(m, "ff_dim"), field<int64_t>(m, "enc_layers"), field<int64_t>(m, "dec_layers"),
                        field<int64_t>(m, "max_positions"), norm == "pre", positions == "learned",
                        field<bool>(m, "tie_embeddings")};
    return create_transformer(c, weights, compute_type);
  }
  throw std::invalid_argument("model.family must be rnn, attention or transformer, not " + family);
}

}  // namespace seq2seq
