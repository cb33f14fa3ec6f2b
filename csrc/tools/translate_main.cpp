// seq2seq-translate: raw text in (stdin, one sentence per line), translations out (stdout),
// with the C++ engine on an export directory and SentencePiece's C++ library; no Python.
//
//   seq2seq-translate EXPORT_DIR [--beam-size 5] [--threads 0] [--compute-type float32|int8|bfloat16]
//                     [--device cpu|cuda] [--batch 32] [--max-length 256] [--length-penalty gnmt] [--alpha 0.6]
//                     [--no-repeat-ngram-size 0] [--scores]
//
// Decoding options not given are the export's decoding defaults (seq2seq export --alpha ...),
// else DecodeOptions' own.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "../common.h"
#include "../engine.h"
#include "../io/export_reader.h"
#include "../io/text.h"
#include "../io/tokenizer.h"

namespace {

constexpr size_t kMaxSourceTokens = 1024;  // as the Python Engine's max_source_tokens

const char* kUsage =
    "usage: seq2seq-translate EXPORT_DIR [--beam-size N] [--threads N] [--compute-type float32|int8|bfloat16]\n"
    "                         [--device cpu|cuda|cuda:N] [--batch N] [--max-length N] [--length-penalty none|gnmt|average] [--alpha A]\n"
    "                         [--no-repeat-ngram-size N] [--scores]\n"
    "Reads sentences from stdin, one per line, and writes one translation per line. Decoding options not\n"
    "given are the export's defaults (seq2seq export --alpha ...).\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace seq2seq;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cerr << kUsage;
    return argc < 2 ? 2 : 0;
  }
  try {
    const std::string dir = argv[1];
    DecodeOptions opts = decoding_defaults(dir);
    int64_t threads = 0, batch = 32;
    std::string compute_type = "float32", device = "cpu";
    bool scores = false;
    for (int i = 2; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--scores") {
        scores = true;
        continue;
      }
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value\n" + kUsage);
      const char* value = argv[++i];
      if (flag == "--beam-size") opts.beam_size = parse_integer(flag, value);
      else if (flag == "--threads") threads = parse_integer(flag, value);
      else if (flag == "--batch") batch = parse_integer(flag, value);
      else if (flag == "--max-length") opts.max_length = parse_integer(flag, value);
      else if (flag == "--length-penalty") opts.length_penalty = value;
      else if (flag == "--alpha") opts.alpha = parse_number(flag, value);
      else if (flag == "--no-repeat-ngram-size") opts.no_repeat_ngram_size = parse_integer(flag, value);
      else if (flag == "--compute-type") compute_type = value;
      else if (flag == "--device") device = value;
      else throw std::invalid_argument("unknown option " + flag + "\n" + kUsage);
    }
    if (batch < 1) throw std::invalid_argument("--batch must be at least 1");
    if (threads < 0) throw std::invalid_argument("--threads must be >= 0 (0: the default)");
    validate_options(opts);

    const TokenizerFiles tokenizers = tokenizer_files(dir);
    Engine engine(dir, threads, compute_type, "device", device);
    const auto src_sp = load_sentencepiece(tokenizers.source, tokenizers.source_vocab),
               tgt_sp = load_sentencepiece(tokenizers.target, tokenizers.target_vocab);

    std::vector<std::string> lines;
    auto flush = [&](size_t first_line) {
      std::vector<std::vector<int64_t>> sources;
      std::vector<size_t> rows;  // which lines are not empty
      for (size_t i = 0; i < lines.size(); ++i) {
        std::vector<int64_t> ids = src_sp->encode(normalize(lines[i]));
        if (ids.empty()) continue;
        if (ids.size() > kMaxSourceTokens)
          throw std::invalid_argument("line " + std::to_string(first_line + i) + " has " + std::to_string(ids.size()) +
                                      " tokens; the engine reads at most " + std::to_string(kMaxSourceTokens) +
                                      ": split the sentence");
        sources.push_back(std::move(ids));
        rows.push_back(i);
      }
      auto results = engine.translate(sources, opts);
      std::vector<std::string> out(lines.size());
      std::vector<double> score(lines.size(), 0.0);
      for (size_t r = 0; r < rows.size(); ++r) {
        out[rows[r]] = tgt_sp->decode(results[r][0].tokens);
        // One translation per line: a line break decoded from byte pieces would split it.
        for (char& c : out[rows[r]])
          if (c == '\n' || c == '\r') c = ' ';
        score[rows[r]] = results[r][0].score;
      }
      for (size_t i = 0; i < lines.size(); ++i) {
        if (scores) std::cout << score[i] << '\t';
        std::cout << out[i] << '\n';
      }
      std::cout.flush();
      lines.clear();
    };
    size_t line_no = 0, first = 1;
    for (std::string line; std::getline(std::cin, line);) {
      lines.push_back(line);
      if (static_cast<int64_t>(lines.size()) == batch) {
        flush(first);
        first = line_no + 2;
      }
      ++line_no;
    }
    if (!lines.empty()) flush(first);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "seq2seq-translate: error: " << e.what() << '\n';
    return 1;
  }
}
