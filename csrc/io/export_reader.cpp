#include "export_reader.h"

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "../common.h"

namespace seq2seq {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

json parse_json(const std::string& text, const std::string& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, std::string("malformed JSON (") + e.what() + ")");
  }
}

json read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const json config = parse_json(read_file(path), path);
  if (!config.is_object()) fail(path, "expected a JSON object");
  const int version = config.value("format_version", -1);
  if (version < 1) fail(path, "no format_version: this is not an export (write one with `seq2seq export`)");
  if (version > kFormatVersion)
    fail(path, "format_version " + std::to_string(version) + " is newer than this engine reads (" +
                   std::to_string(kFormatVersion) + "): update the engine");
  if (!config.contains("model") || !config["model"].is_object()) fail(path, "no \"model\" object");
  return config;
}

}  // namespace

Weights read_safetensors(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 8) fail(path, "truncated: shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > bytes.size() - 8) fail(path, "truncated: the header runs past the end of the file");
  const json header = parse_json(bytes.substr(8, header_len), path);
  if (!header.is_object()) fail(path, "the header is not a JSON object");
  const size_t data_start = 8 + header_len, data_len = bytes.size() - data_start;
  Weights weights;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      fail(path, "tensor " + name + ": the header entry lacks dtype, shape or data_offsets");
    if (info["dtype"] != "F32")
      fail(path, "tensor " + name + " is " + info["dtype"].dump() + "; the engine reads F32 (float32) tensors");
    std::vector<int64_t> shape = info["shape"].get<std::vector<int64_t>>();
    const auto offsets = info["data_offsets"].get<std::vector<uint64_t>>();
    int64_t count = 1;
    for (auto d : shape) count *= d;
    if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] - offsets[0] != 4 * static_cast<uint64_t>(count))
      fail(path, "tensor " + name + ": its byte range does not match its shape");
    if (offsets[1] > data_len) fail(path, "truncated: tensor " + name + " runs past the end of the file");
    auto t = at::empty(shape, at::kFloat);
    std::memcpy(t.data_ptr<float>(), bytes.data() + data_start + offsets[0], 4 * count);
    weights.emplace(name, t);
  }
  return weights;
}

LoadedExport load_export(const std::string& dir) {
  const json config = read_config(dir);
  LoadedExport out;
  out.dir = dir;
  out.model_config = config["model"].dump();
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
  auto model_file = [&](const char* side) -> std::string {
    const json& entry = tok.at(side);
    if (entry.value("kind", "") != "sentencepiece")
      fail(tok_path, std::string("the ") + side + " tokenizer is " + entry.value("kind", "unknown") +
                         "; the C++ translator reads SentencePiece tokenizers only");
    return dir + "/" + entry.at("model").get<std::string>();
  };
  if (tok.contains("joint")) return {model_file("joint"), model_file("joint")};
  if (tok.contains("src") && tok.contains("tgt")) return {model_file("src"), model_file("tgt")};
  fail(tok_path, "names neither a joint tokenizer nor src and tgt ones");
}

}  // namespace seq2seq
