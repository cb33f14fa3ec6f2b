#include "export_reader.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "../common.h"
#include "../decoding.h"
#include "../models/model.h"

namespace seq2seq {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

// The deepest nesting of [ and { in JSON text, strings skipped. nlohmann's parser keeps a
// stack of its own, but dump() and comparisons recurse: a config.json of 100,000 nested [
// crashed the server. An export's JSON nests a few levels.
constexpr size_t kMaxJsonDepth = 64;

size_t json_depth(const std::string& text) {
  size_t depth = 0, deepest = 0;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '\\') ++i;
      else if (c == '"') quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

json parse_json(const std::string& text, const std::string& path) {
  if (json_depth(text) > kMaxJsonDepth)
    fail(path, "nested too deeply; an export's JSON nests a few levels: export the checkpoint again with "
               "`seq2seq export`");
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, std::string("malformed JSON (") + e.what() + ")");
  }
}

const char* const kExportAgain = "; export the checkpoint again with `seq2seq export`";
constexpr uint64_t kMaxHeaderBytes = 100000000;  // the safetensors library's own limit

// A header shape: whole dimensions >= 0. `bytes` gets its F32 byte count, computed with overflow
// checks: a product that wrapped around ([2^62, 4] gives 0) would pass the byte-range check.
std::vector<int64_t> tensor_shape(const std::string& path, const std::string& name, const json& dims,
                                  uint64_t* bytes) {
  const std::string where = "tensor " + name + ": shape " + dims.dump();
  if (!dims.is_array()) fail(path, where + " is not a list of dimensions" + kExportAgain);
  std::vector<int64_t> shape;
  uint64_t bound = sizeof(float);  // the byte count were every 0 dimension a 1: it must not overflow either
  bool empty = false;
  for (const auto& d : dims) {
    if (!d.is_number_integer()) fail(path, where + " holds a dimension that is not a whole number" + kExportAgain);
    if (!d.is_number_unsigned() && d.get<int64_t>() < 0)
      fail(path, where + " holds a negative dimension" + kExportAgain);
    const uint64_t n = d.get<uint64_t>();
    if (__builtin_mul_overflow(bound, std::max<uint64_t>(n, 1), &bound) || bound > INT64_MAX)
      fail(path, where + " is too large: its byte count overflows 64 bits" + kExportAgain);
    empty |= n == 0;
    shape.push_back(static_cast<int64_t>(n));
  }
  *bytes = empty ? 0 : bound;
  return shape;
}

// A field the C++ programs read, when present, must be a string (else true or false).
void expect(const std::string& path, const json& section, const std::string& prefix, const char* key, bool string) {
  if (!section.contains(key)) return;
  const json& value = section[key];
  if (string ? !value.is_string() : !value.is_boolean())
    fail(path, json_type_error(prefix + key, value, string ? "a string" : "true or false"));
}

json read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const json config = parse_json(read_file(path), path);
  if (!config.is_object()) fail(path, "expected a JSON object");
  if (!config.contains("format_version"))
    fail(path, "no format_version: this is not an export (write one with `seq2seq export`)");
  if (!config["format_version"].is_number_integer())
    fail(path, json_type_error("format_version", config["format_version"], "an integer"));
  const int64_t version = config["format_version"].get<int64_t>();
  if (version < 1) fail(path, "no format_version: this is not an export (write one with `seq2seq export`)");
  if (version > kFormatVersion)
    fail(path, "format_version " + std::to_string(version) + " is newer than this engine reads (" +
                   std::to_string(kFormatVersion) + "): update the engine");
  if (!config.contains("model") || !config["model"].is_object()) fail(path, "no \"model\" object");
  try {
    check_model_config(config["model"]);
  } catch (const std::invalid_argument& e) {
    fail(path, e.what());
  }
  expect(path, config, "", "task", true);
  if (config.contains("data")) {
    const json& data = config["data"];
    if (!data.is_object()) fail(path, "\"data\" must be an object of DataConfig fields");
    for (const char* key : {"src", "tgt", "task"}) expect(path, data, "data.", key, true);
    for (const char* key : {"lowercase", "ascii_fold"}) expect(path, data, "data.", key, false);
  }
  return config;
}

// config.json's "decoding": the model's decoding defaults (seq2seq export --alpha ...), the
// checks of seq2seq/export.py's check_decoding.
DecodeOptions read_decoding(const std::string& path, const json& config) {
  DecodeOptions opts;
  if (!config.contains("decoding")) return opts;
  const json& d = config["decoding"];
  if (!d.is_object()) fail(path, "\"decoding\" must be an object of DecodingOptions fields" + std::string(kExportAgain));
  for (const auto& [key, value] : d.items()) {
    const std::string name = "decoding." + key;
    auto integer = [&](int64_t* field) {
      if (!value.is_number_integer()) fail(path, json_type_error(name, value, "an integer"));
      *field = value.get<int64_t>();
    };
    auto number = [&](double* field) {
      if (!value.is_number()) fail(path, json_type_error(name, value, "a number"));
      *field = value.get<double>();
    };
    if (key == "beam_size") integer(&opts.beam_size);
    else if (key == "n_best") integer(&opts.n_best);
    else if (key == "min_length") integer(&opts.min_length);
    else if (key == "max_length") integer(&opts.max_length);
    else if (key == "max_length_extra") integer(&opts.max_length_extra);
    else if (key == "no_repeat_ngram_size") integer(&opts.no_repeat_ngram_size);
    else if (key == "alpha") number(&opts.alpha);
    else if (key == "min_length_ratio") number(&opts.min_length_ratio);
    else if (key == "max_length_ratio") number(&opts.max_length_ratio);
    else if (key == "length_penalty") {
      if (!value.is_string()) fail(path, json_type_error(name, value, "a string"));
      opts.length_penalty = value.get<std::string>();
    } else if (key == "early_stop") {
      if (!value.is_boolean()) fail(path, json_type_error(name, value, "true or false"));
      opts.early_stop = value.get<bool>();
    } else {
      fail(path, "\"decoding\" has unknown field \"" + key + "\"; a model's decoding defaults may set beam_size, "
                 "n_best, length_penalty, alpha, min_length, min_length_ratio, max_length, max_length_ratio, "
                 "max_length_extra, early_stop, no_repeat_ngram_size");
    }
  }
  try {
    validate_options(opts);
  } catch (const std::invalid_argument& e) {
    fail(path, std::string("\"decoding\": ") + e.what());
  }
  return opts;
}

}  // namespace

Weights read_safetensors(const std::string& path) {
  const uint64_t file_size = regular_file_size(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot be read (missing, or no permission)");
  if (file_size < 8) fail(path, "truncated: shorter than the 8-byte header length");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > file_size - 8) fail(path, "truncated: the header runs past the end of the file");
  if (header_len > kMaxHeaderBytes)
    fail(path, "the header is " + std::to_string(header_len) + " bytes; safetensors allows at most " +
                   std::to_string(kMaxHeaderBytes) + kExportAgain);
  std::string header_text(header_len, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_len));
  if (!in) fail(path, "changed while being read (still being written?); load it once it is complete");
  const json header = parse_json(header_text, path);
  if (!header.is_object()) fail(path, "the header is not a JSON object");
  const uint64_t data_start = 8 + header_len, data_len = file_size - data_start;
  Weights weights;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      fail(path, "tensor " + name + ": the header entry lacks dtype, shape or data_offsets");
    if (info["dtype"] != "F32")
      fail(path, "tensor " + name + " is " + info["dtype"].dump() + "; the engine reads F32 (float32) tensors");
    uint64_t bytes = 0;
    const std::vector<int64_t> shape = tensor_shape(path, name, info["shape"], &bytes);
    const json& range = info["data_offsets"];
    if (!range.is_array() || range.size() != 2 || !range[0].is_number_unsigned() || !range[1].is_number_unsigned())
      fail(path, "tensor " + name + ": data_offsets " + range.dump() + " is not two byte offsets" + kExportAgain);
    const uint64_t begin = range[0], end = range[1];
    if (end < begin || end - begin != bytes) fail(path, "tensor " + name + ": its byte range does not match its shape");
    if (end > data_len) fail(path, "truncated: tensor " + name + " runs past the end of the file");
    auto t = at::empty(shape, at::kFloat);
    in.seekg(static_cast<std::streamoff>(data_start + begin));
    in.read(reinterpret_cast<char*>(t.data_ptr<float>()), static_cast<std::streamsize>(bytes));
    if (!in) fail(path, "changed while being read (still being written?); load it once it is complete");
    // As seq2seq/export.py's load_export: such weights would translate into garbage, silently.
    if (!at::isfinite(t).all().item<bool>())
      fail(path, "tensor " + name + " holds NaN or infinite values; export a checkpoint whose weights are finite");
    weights.emplace(name, t);
  }
  return weights;
}

DecodeOptions decoding_defaults(const std::string& dir) { return read_decoding(dir + "/config.json", read_config(dir)); }

LoadedExport load_export(const std::string& dir) {
  const json config = read_config(dir);
  LoadedExport out;
  out.dir = dir;
  out.model_config = config["model"].dump();
  out.decoding = read_decoding(dir + "/config.json", config);
  out.weights = read_safetensors(dir + "/model.safetensors");
  return out;
}

TokenizerFiles tokenizer_files(const std::string& dir) {
  const json config = read_config(dir);
  const json data = config.value("data", json::object());
  if (data.value("lowercase", false) || data.value("ascii_fold", false))
    fail(dir + "/config.json", "the model was trained on lowercased or ASCII-folded text, whose Unicode rules this "
                               "translator does not reproduce; translate with `seq2seq translate` instead");
  const std::string tok_path = dir + "/tokenizer.json";
  const json tok = parse_json(read_file(tok_path), tok_path);
  // (model file, vocabulary file or "") of one side
  auto files = [&](const char* side) -> std::pair<std::string, std::string> {
    const json& entry = tok.at(side);
    if (entry.value("kind", "") != "sentencepiece")
      fail(tok_path, std::string("the ") + side + " tokenizer is " + entry.value("kind", "unknown") +
                         "; the C++ translator reads SentencePiece tokenizers only");
    return {dir + "/" + entry.at("model").get<std::string>(),
            entry.contains("vocab") ? dir + "/" + entry.at("vocab").get<std::string>() : ""};
  };
  if (tok.contains("joint")) {
    const auto [model, vocab] = files("joint");
    return {model, model, vocab, vocab};
  }
  if (tok.contains("src") && tok.contains("tgt")) {
    const auto [src, src_vocab] = files("src");
    const auto [tgt, tgt_vocab] = files("tgt");
    return {src, tgt, src_vocab, tgt_vocab};
  }
  fail(tok_path, "names neither a joint tokenizer nor src and tgt ones");
}

}  // namespace seq2seq
