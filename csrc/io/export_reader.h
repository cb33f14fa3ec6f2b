// Reading an export directory (seq2seq/export.py) without Python: config.json and
// model.safetensors, validated before use. Errors are std::runtime_error naming the file
// and the problem.
#pragma once

#include <string>

#include "../decoding.h"
#include "../layers/dense.h"

namespace seq2seq {

constexpr int kFormatVersion = 1;  // the newest export format this reader knows

struct LoadedExport {
  std::string dir;
  std::string model_config;  // config.json's "model" object as JSON text, for create_model
  DecodeOptions decoding;    // config.json's "decoding" over DecodeOptions' own defaults
  Weights weights;
};

LoadedExport load_export(const std::string& dir);

// config.json's decoding defaults alone (checked as load_export checks them), without the weights.
DecodeOptions decoding_defaults(const std::string& dir);

// The SentencePiece model files of an export, for the C++ programs that tokenize text
// themselves; refuses exports whose text normalization they do not reproduce.
struct TokenizerFiles {
  std::string source, target;
  std::string source_vocab, target_vocab;  // empty where the SentencePiece ids are the token ids
};
TokenizerFiles tokenizer_files(const std::string& dir);

// Safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the bytes. Only F32 tensors are accepted.
Weights read_safetensors(const std::string& path);

}  // namespace seq2seq
