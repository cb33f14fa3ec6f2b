// config.json's "model" object -> the model: the one place that reads the model configuration.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iterator>

#include "../common.h"
#include "model.h"

namespace seq2seq {
namespace {

using json = nlohmann::json;

// Every field of seq2seq.config.ModelConfig and its type: an export holds them all, and nothing else.
enum Kind { kInteger, kNumber, kBool, kString };
const std::pair<const char*, Kind> kFields[] = {
    {"family", kString}, {"src_vocab", kInteger}, {"tgt_vocab", kInteger}, {"dropout", kNumber},
    {"cell", kString}, {"emb_dim", kInteger}, {"hidden", kInteger}, {"layers", kInteger},
    {"bidirectional", kBool}, {"context_feed", kBool}, {"attention", kString}, {"attention_dim", kInteger},
    {"input_feed", kBool}, {"d_model", kInteger}, {"heads", kInteger}, {"ff_dim", kInteger},
    {"enc_layers", kInteger}, {"dec_layers", kInteger}, {"norm", kString}, {"positions", kString},
    {"max_positions", kInteger}, {"tie_embeddings", kBool}, {"copy", kBool},
    {"activation", kString}, {"scale_embeddings", kBool}};
// Fields added after exports were first written: absent means ModelConfig's default.
const char* const kOptional[] = {"copy", "activation", "scale_embeddings"};

// Read once check_model_config has passed: every type is as kFields says.
template <typename T>
T field(const json& m, const char* key) {
  return m.at(key).get<T>();
}

}  // namespace

std::string json_type_error(const std::string& where, const nlohmann::json& value, const char* kind) {
  std::string shown = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  return "\"" + where + "\" must be " + kind + ", not " + shown +
         "; correct it, or export the checkpoint again with `seq2seq export`";
}

void check_model_config(const nlohmann::json& m) {
  check(m.is_object(), "the model configuration must be a JSON object of ModelConfig fields");
  for (const auto& [key, _] : kFields)
    check(m.contains(key) || std::find(std::begin(kOptional), std::end(kOptional), std::string(key)) !=
                                 std::end(kOptional),
          std::string("the model configuration lacks model.") + key + ": export the checkpoint again with this seq2seq");
  for (const auto& [key, value] : m.items()) {
    const Kind* kind = nullptr;
    for (const auto& [k, type] : kFields)
      if (key == k) kind = &type;
    check(kind != nullptr, "the model configuration has model." + key +
                               ", which this engine does not know: the export needs a newer engine");
    // As seq2seq/export.py's FIELD_TYPES: an integer takes no 256.5 or true, a number a whole one too.
    const bool fits = *kind == kInteger ? value.is_number_integer()
                      : *kind == kNumber ? value.is_number()
                      : *kind == kBool   ? value.is_boolean()
                                         : value.is_string();
    const char* names[] = {"an integer", "a number", "true or false", "a string"};
    check(fits, json_type_error("model." + key, value, names[*kind]));
  }
}

std::pair<at::Tensor, at::Tensor> source_ids(const std::vector<std::vector<int64_t>>& sources) {
  const int64_t N = static_cast<int64_t>(sources.size());
  int64_t S = 0;
  for (const auto& s : sources) S = std::max<int64_t>(S, static_cast<int64_t>(s.size()) + 1);
  auto src = at::full({N, S}, kPad, at::kLong);
  auto lengths = at::empty({N}, at::kLong);
  auto* ids = src.data_ptr<int64_t>();
  auto* len = lengths.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    std::copy(sources[n].begin(), sources[n].end(), ids + n * S);
    ids[n * S + sources[n].size()] = kEos;
    len[n] = static_cast<int64_t>(sources[n].size()) + 1;
  }
  return {src, lengths};
}

std::unique_ptr<Model> create_model(const std::string& model_config_json, const Weights& weights,
                                    ComputeType compute_type, const at::Device& device) {
  json m;
  try {
    m = json::parse(model_config_json);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(std::string("the model configuration is malformed JSON (") + e.what() + ")");
  }
  check_model_config(m);
  const auto family = field<std::string>(m, "family");
  const auto src_vocab = field<int64_t>(m, "src_vocab"), tgt_vocab = field<int64_t>(m, "tgt_vocab");
  check(src_vocab > kEos + 1 && tgt_vocab > kEos + 1, "model.src_vocab and tgt_vocab must be above 4");
  check(!m.value("copy", false) || src_vocab == tgt_vocab,
        "model.copy needs one vocabulary for both sides (src_vocab = tgt_vocab)");
  if (family == "rnn" || family == "attention") {
    RnnConfig c{family, field<std::string>(m, "cell"), field<std::string>(m, "attention"), src_vocab, tgt_vocab,
                field<int64_t>(m, "emb_dim"), field<int64_t>(m, "hidden"), field<int64_t>(m, "layers"),
                field<int64_t>(m, "attention_dim"), field<bool>(m, "bidirectional"), field<bool>(m, "context_feed"),
                field<bool>(m, "input_feed"), m.value("copy", false)};
    check(!c.copy || family == "attention", "model.copy needs family attention or transformer, not " + family);
    WeightReader reader(weights, device);
    auto model = create_rnn(c, reader, compute_type);
    model->options = model->options.device(device);
    return model;
  }
  if (family == "transformer") {
    const auto norm = field<std::string>(m, "norm"), positions = field<std::string>(m, "positions");
    check(norm == "pre" || norm == "post", "model.norm must be pre or post, not " + norm);
    check(positions == "sinusoidal" || positions == "learned",
          "model.positions must be sinusoidal or learned, not " + positions);
    TransformerConfig c{src_vocab, tgt_vocab, field<int64_t>(m, "d_model"), field<int64_t>(m, "heads"),
                        field<int64_t>(m, "ff_dim"), field<int64_t>(m, "enc_layers"), field<int64_t>(m, "dec_layers"),
                        field<int64_t>(m, "max_positions"), norm == "pre", positions == "learned",
                        field<bool>(m, "tie_embeddings"), m.value("copy", false),
                        parse_activation(m.value("activation", std::string("relu"))),
                        m.value("scale_embeddings", true)};
    WeightReader reader(weights, device);
    auto model = create_transformer(c, reader, compute_type);
    model->options = model->options.device(device);
    return model;
  }
  throw std::invalid_argument("model.family must be rnn, attention or transformer, not " + family);
}

}  // namespace seq2seq
