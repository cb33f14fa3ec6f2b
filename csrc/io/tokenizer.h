// A SentencePiece model as the exports use it (seq2seq/data/tokenizers.py).
//
// Debian's libsentencepiece carries its own copy of protobuf (3.14) and exports its symbols,
// which clash with the libprotobuf that gRPC programs load (3.21): each would call the
// other's functions. So the library is reached only through libseq2seq_sentencepiece.so
// (tokenizer_impl.cpp), opened beside the executable with RTLD_DEEPBIND, which makes it and
// libsentencepiece bind to their own symbols first. Its header stays out of this one too: it
// declares an absl::string_view of its own that collides with the real Abseil.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace seq2seq {

// What libseq2seq_sentencepiece.so implements.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of text already normalized (text.h); throws std::invalid_argument.
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  // Text of token ids, skipping <pad>, <bos> and <eos> as the Python decoder does.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // Whether the id is one of the byte pieces that spell characters outside the vocabulary.
  virtual bool is_byte(int64_t id) const = 0;
};

// Loads the model file; throws std::runtime_error naming the file (or the missing library).
// vocab_path, when not empty, names a JSON list of pieces, one per token id (an imported
// model's shared vocabulary, as seq2seq/data/tokenizers.py reads it): the ids are then the
// pieces' places in that list, a piece it lacks being <unk>.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const std::string& vocab_path = "");

}  // namespace seq2seq
