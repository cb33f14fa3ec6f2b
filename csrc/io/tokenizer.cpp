#include "tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <mutex>
#include <stdexcept>
#include <unordered_set>

#include "../common.h"

namespace seq2seq {
namespace {

using Load = Tokenizer* (*)(const char*, const std::vector<std::string>*, std::string*);

// The directory of the running executable, where the build puts libseq2seq_sentencepiece.so.
std::string program_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  const std::string path(buf, n);
  return path.substr(0, path.find_last_of('/'));
}

Load loader() {
  static std::once_flag once;
  static Load load = nullptr;
  static std::string error;
  std::call_once(once, [] {
    const std::string lib = program_dir() + "/libseq2seq_sentencepiece.so";
    void* handle = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) {
      error = std::string("cannot open the SentencePiece library: ") + dlerror() + " (build it with `make cpp`)";
      return;
    }
    load = reinterpret_cast<Load>(dlsym(handle, "seq2seq_load_sentencepiece"));
    if (!load) error = lib + ": no seq2seq_load_sentencepiece";
  });
  if (!load) throw std::runtime_error(error);
  return load;
}

}  // namespace

namespace {

std::vector<std::string> read_vocab(const std::string& path) {
  nlohmann::json list;
  try {
    list = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": malformed JSON (" + e.what() + ")");
  }
  if (!list.is_array() || list.size() <= static_cast<size_t>(kEos))
    throw std::runtime_error(path + ": a vocabulary is a JSON list of more than 4 pieces, the specials first");
  std::vector<std::string> pieces;
  std::unordered_set<std::string> seen;
  for (const auto& piece : list) {
    if (!piece.is_string()) throw std::runtime_error(path + ": every entry of a vocabulary is a piece (a string)");
    if (!seen.insert(piece.get<std::string>()).second)
      throw std::runtime_error(path + ": the vocabulary lists a piece more than once; each id needs its own piece");
    pieces.push_back(piece.get<std::string>());
  }
  return pieces;
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const std::string& vocab_path) {
  regular_file_size(path);  // a FIFO or a device would block or exhaust SentencePiece's reader
  const std::vector<std::string> vocab = vocab_path.empty() ? std::vector<std::string>{} : read_vocab(vocab_path);
  std::string error;
  Tokenizer* t = loader()(path.c_str(), &vocab, &error);
  if (!t) throw std::runtime_error(error);
  return std::unique_ptr<Tokenizer>(t);
}

}  // namespace seq2seq
