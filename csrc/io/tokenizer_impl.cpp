// libseq2seq_sentencepiece.so: the one place that includes SentencePiece (tokenizer.h says why).
#include <sentencepiece_processor.h>

#include <stdexcept>

#include "tokenizer.h"

namespace seq2seq {
namespace {

constexpr int64_t kUnk = 1, kEos = 3;  // engine.h's; its header would bring ATen into this library

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    const auto status = sp_.Load(path);
    if (!status.ok()) throw std::runtime_error(path + ": cannot load the SentencePiece model (" + status.ToString() + ")");
  }

  std::vector<int64_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    if (!status.ok()) throw std::invalid_argument("cannot tokenize: " + status.ToString());
    return {ids.begin(), ids.end()};
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> kept;
    for (auto t : ids)
      if (t > kEos || t == kUnk) kept.push_back(static_cast<int>(t));
    std::string text;
    const auto status = sp_.Decode(kept, &text);
    if (!status.ok()) throw std::invalid_argument("cannot detokenize: " + status.ToString());
    return text;
  }

  bool is_byte(int64_t id) const override { return sp_.IsByte(static_cast<int>(id)); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace
}  // namespace seq2seq

extern "C" seq2seq::Tokenizer* seq2seq_load_sentencepiece(const char* path, std::string* error) {
  try {
    return new seq2seq::SentencePieceTokenizer(path);
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
}
