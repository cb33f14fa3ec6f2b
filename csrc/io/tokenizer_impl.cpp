// libseq2seq_sentencepiece.so: the one place that includes SentencePiece (tokenizer.h says why).
#include <sentencepiece_processor.h>

#include <stdexcept>
#include <unordered_map>

#include "tokenizer.h"

namespace seq2seq {
namespace {

constexpr int64_t kUnk = 1, kEos = 3;  // engine.h's; its header would bring ATen into this library

// With a vocabulary, ids are places in it (tokenizer.h): text goes to pieces and pieces to
// ids through the list, as seq2seq/data/tokenizers.py's SentencePieceTokenizer does.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, const std::vector<std::string>& vocab) : vocab_(vocab) {
    const auto status = sp_.Load(path);
    if (!status.ok()) throw std::runtime_error(path + ": cannot load the SentencePiece model (" + status.ToString() + ")");
    for (size_t i = 0; i < vocab_.size(); ++i) index_.emplace(vocab_[i], static_cast<int64_t>(i));
  }

  std::vector<int64_t> encode(const std::string& text) const override {
    if (vocab_.empty()) {
      std::vector<int> ids;
      const auto status = sp_.Encode(text, &ids);
      if (!status.ok()) throw std::invalid_argument("cannot tokenize: " + status.ToString());
      return {ids.begin(), ids.end()};
    }
    // A leading target-language code (">>fra<<") is one piece, as in the Python tokenizer.
    const size_t end = text.rfind(">>", 0) == 0 ? text.find("<<") : std::string::npos;
    std::vector<std::string> pieces;
    if (end != std::string::npos) pieces.push_back(text.substr(0, end + 2));
    std::vector<std::string> rest;
    const auto status = sp_.Encode(end == std::string::npos ? text : text.substr(end + 2), &rest);
    if (!status.ok()) throw std::invalid_argument("cannot tokenize: " + status.ToString());
    pieces.insert(pieces.end(), rest.begin(), rest.end());
    std::vector<int64_t> ids;
    ids.reserve(pieces.size());
    for (const auto& piece : pieces) {
      const auto found = index_.find(piece);
      ids.push_back(found == index_.end() ? kUnk : found->second);
    }
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    if (vocab_.empty()) {
      std::vector<int> kept;
      for (auto t : ids)
        if (t > kEos || t == kUnk) kept.push_back(static_cast<int>(t));
      const auto status = sp_.Decode(kept, &text);
      if (!status.ok()) throw std::invalid_argument("cannot detokenize: " + status.ToString());
      return text;
    }
    std::vector<std::string> pieces;
    for (auto t : ids)
      if ((t > kEos || t == kUnk) && t < static_cast<int64_t>(vocab_.size())) pieces.push_back(vocab_[t]);
    const auto status = sp_.Decode(pieces, &text);
    if (!status.ok()) throw std::invalid_argument("cannot detokenize: " + status.ToString());
    // Pieces this side's model lacks keep their word marks (U+2581): spaces, as in the Python tokenizer.
    static const std::string kMark = "\xe2\x96\x81";
    for (size_t at = text.find(kMark); at != std::string::npos; at = text.find(kMark, at + 1))
      text.replace(at, kMark.size(), " ");
    const auto first = text.find_first_not_of(" \t\n\r\f\v"), last = text.find_last_not_of(" \t\n\r\f\v");
    return first == std::string::npos ? "" : text.substr(first, last - first + 1);
  }

  bool is_byte(int64_t id) const override {
    if (vocab_.empty()) return sp_.IsByte(static_cast<int>(id));
    return id >= 0 && id < static_cast<int64_t>(vocab_.size()) && sp_.IsByte(sp_.PieceToId(vocab_[id]));
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int64_t> index_;
};

}  // namespace
}  // namespace seq2seq

extern "C" seq2seq::Tokenizer* seq2seq_load_sentencepiece(const char* path, const std::vector<std::string>* vocab,
                                                          std::string* error) {
  try {
    return new seq2seq::SentencePieceTokenizer(path, *vocab);
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
}
