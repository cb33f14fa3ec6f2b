// Reading an export directory (seq2seq/export.py) without Python: config.json and
// model.safetensors, validated before use. Errors are std::runtime_error naming the file
// and the problem.
#pragma once

#include <string>

#include "../engine.h"

namespace seq2seq {

constexpr int kFormatVersion = 1;  // the newest export format this reader knows

struct LoadedExport {
  std::string dir;
  ModelSpec spec;
  Weights weights;
  std::string src_tokenizer, tgt_tokenizer;  // SentencePiece model files
};

LoadedExport load_export(const std::string& dir);

// Safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the bytes. Only F32 tensors are accepted.
Weights read_safetensors(const std::string& path);

}  // namespace seq2seq
