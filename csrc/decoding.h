// Greedy and beam search, written once against the model-step interface (models/model.h):
// they never know which model they drive. The rules are seq2seq/decoding.py's, token for
// token; its module docstring states them.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/model.h"

namespace seq2seq {

// seq2seq.config.DecodingOptions, field for field, with the same defaults.
struct DecodeOptions {
  int64_t beam_size = 5, n_best = 1;
  std::string length_penalty = "gnmt";  // "none", "gnmt" or "average"
  double alpha = 0.6;
  int64_t min_length = 0;
  double min_length_ratio = 0.0;
  int64_t max_length = 256;
  double max_length_ratio = 2.0;
  int64_t max_length_extra = 10;
  bool early_stop = true, return_attention = false;
  int64_t no_repeat_ngram_size = 0;
};

// Beam sizes beyond this only cost memory: a clear error rather than an allocation failure.
constexpr int64_t kMaxBeam = 256;

// Throws std::invalid_argument with the message seq2seq.config.validate_decoding_options
// gives for the same options (tests/test_engine.py compares them).
void validate_options(const DecodeOptions& opts);

struct Hypothesis {
  std::vector<int64_t> tokens;  // without <bos> and <eos>
  double score = 0.0;           // log_prob after the length penalty
  double log_prob = 0.0;        // summed log-probabilities, <eos> included
  std::optional<at::Tensor> attention;  // (tokens + 1, [heads,] source tokens + 1)
};

using Results = std::vector<std::vector<Hypothesis>>;

// Asked between steps for each sentence still being decoded: true when nobody waits for it any
// more (its caller cancelled, its deadline passed). Such a sentence leaves the batch at once
// and its result is empty. Empty: every sentence is decoded to the end.
using Abandoned = std::function<bool(int64_t sentence)>;

// Per-sentence (min, max) output lengths in tokens, as length_limits in decoding.py.
std::pair<std::vector<int64_t>, std::vector<int64_t>> length_limits(const std::vector<std::vector<int64_t>>& sources,
                                                                    const DecodeOptions& opts);

// Sources are token ids without the appended <eos>, already checked against the model.
Results greedy_search(const Model& model, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                      const Abandoned& abandoned = {});
Results beam_search(const Model& model, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                    const Abandoned& abandoned = {});

// Checks the options and the sources, then greedy search for beam_size 1, beam search otherwise.
Results decode(const Model& model, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
               const Abandoned& abandoned = {});

}  // namespace seq2seq
