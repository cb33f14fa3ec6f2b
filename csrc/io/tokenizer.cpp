#include "tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <stdexcept>

#include "../common.h"

namespace seq2seq {
namespace {

using Load = Tokenizer* (*)(const char*, std::string*);

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

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  regular_file_size(path);  // a FIFO or a device would block or exhaust SentencePiece's reader
  std::string error;
  Tokenizer* t = loader()(path.c_str(), &error);
  if (!t) throw std::runtime_error(error);
  return std::unique_ptr<Tokenizer>(t);
}

}  // namespace seq2seq
