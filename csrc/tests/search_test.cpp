// The search rules of seq2seq/decoding.py's docstring, checked on greedy_search, beam_search
// and decode with a scripted model: its next-token probabilities are a fixed function of the
// sentence and the tokens produced so far, so every expected result is worked out by hand
// (or, for the exhaustive case, by enumerating every sequence).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common.h"
#include "../decoding.h"

namespace seq2seq {
namespace {

// Target tokens after the four specials (<pad> 0, <unk> 1, <bos> 2, <eos> 3).
constexpr int64_t kA = 4, kB = 5, kC = 6, kD = 7, kTargetVocab = 8, kSourceVocab = 10;
constexpr int64_t kMaxSteps = 64;  // longer than any output here
constexpr double kTol = 1e-5;      // float sums of a few log-probabilities

// (token, probability) pairs; tokens not listed have probability 0 (a -inf logit).
using Dist = std::vector<std::pair<int64_t, double>>;
using Script = std::function<Dist(int64_t sentence, const std::vector<int64_t>& prefix)>;

// A model without weights: step() gives log(probability) of the script as logits. The prefix
// of every row lives in state.rows, so the search's own reorder carries it with the beams; a
// search that lost track of its rows would get other probabilities than its tokens imply.
class ScriptedModel : public Model {
 public:
  explicit ScriptedModel(Script script, int64_t max_source = 0) : script_(std::move(script)), max_source_(max_source) {
    family = "scripted";
    source_vocabulary = kSourceVocab;
    target_vocabulary = kTargetVocab;
  }

  State encode(const std::vector<std::vector<int64_t>>& sources) const override {
    const auto n = static_cast<int64_t>(sources.size());
    State state;
    state.rows["sentence"] = at::arange(n, at::kLong);
    state.rows["prefix"] = at::zeros({n, kMaxSteps}, at::kLong);
    return state;
  }

  Step step(int64_t step, const at::Tensor& previous, State& state) const override {
    const int64_t rows = previous.size(0);
    rows_per_step.push_back(rows);
    if (step == 0) {
      EXPECT_TRUE(previous.eq(kBos).all().item<bool>()) << "the first step follows <bos>";
    }
    // Into a copy: the state the search handed over is left as it was, as a real model leaves it.
    auto prefix = state.rows.at("prefix").clone();
    if (step > 0) prefix.select(1, step - 1).copy_(previous);
    state.rows["prefix"] = prefix;
    const auto p = prefix.accessor<int64_t, 2>();
    const auto sentence = state.rows.at("sentence").accessor<int64_t, 1>();
    auto logits = at::full({rows, kTargetVocab}, kNegInf);
    auto l = logits.accessor<float, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int64_t> so_far;
      for (int64_t i = 0; i < step; ++i) so_far.push_back(p[r][i]);
      for (const auto& [token, prob] : script_(sentence[r], so_far)) l[r][token] = static_cast<float>(std::log(prob));
    }
    return {logits, at::Tensor()};
  }

  int64_t max_source_length() const override { return max_source_; }

  mutable std::vector<int64_t> rows_per_step;  // how many rows each step() saw

 private:
  Script script_;
  int64_t max_source_;
};

// The script of a table of prefixes; a prefix not in it ends the sentence.
Script tree(std::map<std::vector<int64_t>, Dist> table) {
  return [table](int64_t, const std::vector<int64_t>& prefix) {
    const auto it = table.find(prefix);
    return it == table.end() ? Dist{{kEos, 1.0}} : it->second;
  };
}

// The same distribution after every prefix of every sentence.
Script always(Dist d) {
  return [d](int64_t, const std::vector<int64_t>&) { return d; };
}

// Fixed pseudo-random probabilities of <eos>, A and B for every (sentence, prefix): no
// structure a search could luck into.
Dist hashed(int64_t sentence, const std::vector<int64_t>& prefix) {
  uint64_t h = 1469598103934665603ull ^ static_cast<uint64_t>(sentence + 1);
  for (auto t : prefix) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  Dist d;
  double total = 0;
  for (int64_t token : {kEos, kA, kB}) {
    h = h * 6364136223846793005ull + 1442695040888963407ull;
    const double weight = 1 + static_cast<double>((h >> 33) % 97);
    d.emplace_back(token, weight);
    total += weight;
  }
  for (auto& entry : d) entry.second /= total;
  return d;
}

// Every field set, so that no test leans on the defaults (beam 5, gnmt, ratio 2.0, extra 10):
// no length penalty, outputs of at most 10 tokens whatever the source.
DecodeOptions plain(int64_t beam, int64_t n_best = 1) {
  DecodeOptions o;
  o.beam_size = beam;
  o.n_best = n_best;
  o.length_penalty = "none";
  o.alpha = 0.6;
  o.min_length = 0;
  o.min_length_ratio = 0.0;
  o.max_length = 10;
  o.max_length_ratio = 0.0;  // 0 turns the per-source limit off
  o.max_length_extra = 0;
  o.early_stop = true;
  o.return_attention = false;
  o.no_repeat_ngram_size = 0;
  return o;
}

double log_of(std::initializer_list<double> probs) {
  double sum = 0;
  for (double p : probs) sum += std::log(p);
  return sum;
}

using Tokens = std::vector<std::vector<int64_t>>;

Tokens tokens_of(const std::vector<Hypothesis>& hyps) {
  Tokens out;
  for (const auto& h : hyps) out.push_back(h.tokens);
  return out;
}

const Tokens kOneSource = {{5}};

// f() must throw std::invalid_argument with exactly this message.
template <typename F>
void expect_message(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(Search, GreedyTakesTheMostLikelyTokenTiesToTheLowestId) {
  // B and C tie at 0.4 after <bos>: B, the lower id, wins; then <eos> (0.6) beats A (0.4).
  ScriptedModel model(tree({{{}, {{kA, 0.2}, {kB, 0.4}, {kC, 0.4}}}, {{kB}, {{kEos, 0.6}, {kA, 0.4}}}}));
  const auto results = greedy_search(model, kOneSource, plain(1));
  ASSERT_EQ(results.size(), 1u);
  ASSERT_EQ(results[0].size(), 1u);
  EXPECT_EQ(results[0][0].tokens, std::vector<int64_t>({kB}));
  EXPECT_NEAR(results[0][0].log_prob, log_of({0.4, 0.6}), kTol);
  EXPECT_NEAR(results[0][0].score, log_of({0.4, 0.6}), kTol);
  EXPECT_FALSE(results[0][0].attention.has_value());  // the model gives none

  auto gnmt = plain(1);
  gnmt.length_penalty = "gnmt";  // 2 tokens with the <eos>: divided by (7/6)^0.6
  EXPECT_NEAR(greedy_search(model, kOneSource, gnmt)[0][0].score, log_of({0.4, 0.6}) / std::pow(7.0 / 6.0, 0.6), kTol);
}

TEST(Search, GreedyEqualsBeamSizeOne) {
  ScriptedModel model(hashed);
  const std::vector<std::vector<int64_t>> sources = {{5, 6, 7}, {8}, {9, 9, 9, 9, 9, 9}, {4, 5}};
  auto o = plain(1);
  o.length_penalty = "gnmt";
  o.max_length_ratio = 1.0;  // 1..6 tokens, so some sentences end by <eos> and some at the limit
  o.max_length_extra = 0;
  const auto greedy = greedy_search(model, sources, o);
  const auto beam = beam_search(model, sources, o);
  const auto decoded = decode(model, sources, o);
  ASSERT_EQ(greedy.size(), sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    ASSERT_EQ(greedy[i].size(), 1u);
    ASSERT_EQ(beam[i].size(), 1u);
    EXPECT_EQ(greedy[i][0].tokens, beam[i][0].tokens) << "sentence " << i;
    EXPECT_EQ(greedy[i][0].log_prob, beam[i][0].log_prob) << "sentence " << i;  // one kernel, same sums
    EXPECT_EQ(greedy[i][0].score, beam[i][0].score) << "sentence " << i;
    EXPECT_EQ(decoded[i][0].tokens, greedy[i][0].tokens) << "decode() takes greedy search for beam_size 1";
  }
}

TEST(Search, BeamFindsASequenceGreedyMisses) {
  // A (0.5) beats B (0.4) first, but A's best ending is 0.5 * 0.35 = 0.175 against B <eos>'s
  // 0.4 * 0.9 = 0.36. After A, C and D tie at 0.35: C (lower id) comes first.
  ScriptedModel model(tree({{{}, {{kA, 0.5}, {kB, 0.4}, {kEos, 0.1}}},
                            {{kA}, {{kEos, 0.3}, {kC, 0.35}, {kD, 0.35}}},
                            {{kB}, {{kEos, 0.9}, {kC, 0.1}}}}));
  const auto greedy = greedy_search(model, kOneSource, plain(1));
  EXPECT_EQ(greedy[0][0].tokens, std::vector<int64_t>({kA, kC}));
  EXPECT_NEAR(greedy[0][0].log_prob, log_of({0.5, 0.35, 1.0}), kTol);

  const auto beam = beam_search(model, kOneSource, plain(2, 2));
  // Step 1 ends B (0.36, rank 0) and keeps A C, A D; step 2 ends both at 0.175, A C first.
  // The equal scores keep that order; the 2-best are B and A C.
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{kB}, {kA, kC}}));
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.4, 0.9}), kTol);
  EXPECT_NEAR(beam[0][0].score, log_of({0.4, 0.9}), kTol);
  EXPECT_NEAR(beam[0][1].log_prob, log_of({0.5, 0.35, 1.0}), kTol);
}

TEST(Search, TiesGoToTheLowestTokenThenTheLowestBeam) {
  // A and B tie after <bos> (A, the lower id, becomes beam 0); then all four of A C, A D, B C,
  // B D tie at 0.25. By token then beam: A C, B C win; by beam then token it would be A C, A D.
  ScriptedModel model(tree({{{}, {{kA, 0.5}, {kB, 0.5}}},
                            {{kA}, {{kC, 0.5}, {kD, 0.5}}},
                            {{kB}, {{kC, 0.5}, {kD, 0.5}}}}));
  const auto beam = beam_search(model, kOneSource, plain(2, 2));
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{kA, kC}, {kB, kC}}));  // equal scores: order of ending
  EXPECT_EQ(beam[0][0].log_prob, beam[0][1].log_prob);
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.5, 0.5, 1.0}), kTol);
}

TEST(Search, EosEndsAHypothesisOnlyWithinTheFirstBeamSizeCandidates) {
  // Beam 2. Step 1 walks A <eos> 0.35 (rank 0: ends), B D 0.24, B <eos> 0.16 (rank 2: does
  // not end), A C 0.15. Had B <eos> ended, two endings would stop the search there with
  // A and B; instead B D and A C end at step 2 and the 2-best are A and B D.
  ScriptedModel model(tree({{{}, {{kA, 0.5}, {kB, 0.4}, {kEos, 0.1}}},
                            {{kA}, {{kEos, 0.7}, {kC, 0.3}}},
                            {{kB}, {{kD, 0.6}, {kEos, 0.4}}}}));
  const auto beam = beam_search(model, kOneSource, plain(2, 2));
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{kA}, {kB, kD}}));
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.5, 0.7}), kTol);
  EXPECT_NEAR(beam[0][1].log_prob, log_of({0.4, 0.6, 1.0}), kTol);
  EXPECT_EQ(model.rows_per_step, std::vector<int64_t>({2, 2, 2}));
}

TEST(Search, MinLengthForbidsEosBeforeIt) {
  // <eos> is 0.9 likely at every step: only the minimum keeps the output from being empty.
  ScriptedModel model(always({{kEos, 0.9}, {kA, 0.1}}));
  auto o = plain(1);
  o.min_length = 3;
  const auto greedy = greedy_search(model, kOneSource, o);
  EXPECT_EQ(greedy[0][0].tokens, std::vector<int64_t>({kA, kA, kA}));
  EXPECT_NEAR(greedy[0][0].log_prob, log_of({0.1, 0.1, 0.1, 0.9}), kTol);  // <eos> keeps its own log-prob

  o.beam_size = 2;
  const auto beam = beam_search(model, kOneSource, o);
  EXPECT_EQ(beam[0][0].tokens, std::vector<int64_t>({kA, kA, kA}));
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.1, 0.1, 0.1, 0.9}), kTol);

  auto ratio = plain(1);
  ratio.min_length_ratio = 0.5;  // floor(0.5 * 5 source tokens) = 2
  const auto by_ratio = greedy_search(model, {{5, 6, 7, 8, 9}}, ratio);
  EXPECT_EQ(by_ratio[0][0].tokens, std::vector<int64_t>({kA, kA}));

  auto beyond = plain(1);
  beyond.min_length = 5;
  beyond.max_length = 2;  // a minimum past the maximum gives way to it
  EXPECT_EQ(greedy_search(model, kOneSource, beyond)[0][0].tokens, std::vector<int64_t>({kA, kA}));
}

TEST(Search, MaxLengthForcesEos) {
  // <eos> is only 0.1 likely: the limit ends the output, and <eos> still counts its 0.1.
  ScriptedModel model(always({{kA, 0.9}, {kEos, 0.1}}));
  auto o = plain(1);
  o.max_length = 3;
  const auto greedy = greedy_search(model, kOneSource, o);
  EXPECT_EQ(greedy[0][0].tokens, std::vector<int64_t>({kA, kA, kA}));
  EXPECT_NEAR(greedy[0][0].log_prob, log_of({0.9, 0.9, 0.9, 0.1}), kTol);
  EXPECT_EQ(model.rows_per_step, std::vector<int64_t>({1, 1, 1, 1}));  // three tokens, then the <eos>
}

TEST(Search, MaxLengthEndsEveryLiveBeam) {
  // After A: A 0.6, B 0.3, <eos> 0.1; after B: A 0.5, <eos> 0.5. Beam 2, at most 2 tokens.
  // Step 1 keeps A A (0.36) and A B (0.18); step 2 may only end them: A B <eos> 0.09, then
  // A A <eos> 0.036.
  ScriptedModel model([](int64_t, const std::vector<int64_t>& prefix) {
    return prefix.empty() || prefix.back() == kA ? Dist{{kA, 0.6}, {kB, 0.3}, {kEos, 0.1}}
                                                 : Dist{{kA, 0.5}, {kEos, 0.5}};
  });
  auto o = plain(2, 2);
  o.max_length = 2;
  const auto beam = beam_search(model, kOneSource, o);
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{kA, kB}, {kA, kA}}));
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.6, 0.3, 0.5}), kTol);
  EXPECT_NEAR(beam[0][1].log_prob, log_of({0.6, 0.6, 0.1}), kTol);
}

TEST(Search, MaxLengthFollowsTheSourceLength) {
  ScriptedModel model(always({{kA, 0.9}, {kEos, 0.1}}));
  auto o = plain(1);
  o.max_length = 256;
  o.max_length_ratio = 1.5;
  o.max_length_extra = 1;
  // floor(1.5 * n) + 1 tokens: 4 for 2 source tokens, 5 for 3, 2 for 1.
  const auto results = greedy_search(model, {{5, 6}, {5, 6, 7}, {5}}, o);
  EXPECT_EQ(results[0][0].tokens.size(), 4u);
  EXPECT_EQ(results[1][0].tokens.size(), 5u);
  EXPECT_EQ(results[2][0].tokens.size(), 2u);

  o.max_length = 3;  // the smaller of the two limits
  EXPECT_EQ(greedy_search(model, {{5, 6, 7}}, o)[0][0].tokens.size(), 3u);

  o.max_length = 256;
  o.max_length_ratio = 0.1;
  o.max_length_extra = 0;  // floor(0.1) + 0 = 0, raised to the least of 1 token
  EXPECT_EQ(greedy_search(model, kOneSource, o)[0][0].tokens, std::vector<int64_t>({kA}));
}

// Three endings, of 1, 2 and 3 tokens with the <eos>: the empty output 0.4; A 0.35 * 0.5 =
// 0.175; B C 0.25 * 0.8 * 0.8 = 0.16. Beam 3 ends exactly these (A D continues, then stops).
Script three_lengths() {
  return tree({{{}, {{kEos, 0.4}, {kA, 0.35}, {kB, 0.25}}},
               {{kA}, {{kEos, 0.5}, {kD, 0.5}}},
               {{kB}, {{kC, 0.8}, {kEos, 0.2}}},
               {{kB, kC}, {{kEos, 0.8}, {kA, 0.2}}},
               {{kA, kD}, {{kEos, 0.1}, {kA, 0.9}}}});
}

TEST(Search, LengthPenaltiesOrderTheNBest) {
  ScriptedModel model(three_lengths());
  const double empty = log_of({0.4}), a = log_of({0.35, 0.5}), bc = log_of({0.25, 0.8, 0.8});
  auto o = plain(3, 3);

  o.length_penalty = "none";  // -0.92, -1.74, -1.83
  auto r = beam_search(model, kOneSource, o);
  EXPECT_EQ(tokens_of(r[0]), Tokens({{}, {kA}, {kB, kC}}));
  EXPECT_NEAR(r[0][2].score, bc, kTol);

  o.length_penalty = "gnmt";  // divided by ((5 + L) / 6)^0.6: -0.92, -1.54, -1.59
  r = beam_search(model, kOneSource, o);
  EXPECT_EQ(tokens_of(r[0]), Tokens({{}, {kB, kC}, {kA}}));
  EXPECT_NEAR(r[0][0].score, empty, kTol);
  EXPECT_NEAR(r[0][1].score, bc / std::pow(8.0 / 6.0, 0.6), kTol);
  EXPECT_NEAR(r[0][2].score, a / std::pow(7.0 / 6.0, 0.6), kTol);
  EXPECT_NEAR(r[0][1].log_prob, bc, kTol);  // the penalty leaves the log-prob alone

  o.alpha = 0.0;  // gnmt with alpha 0 is no penalty
  EXPECT_EQ(tokens_of(beam_search(model, kOneSource, o)[0]), Tokens({{}, {kA}, {kB, kC}}));

  o.length_penalty = "average";  // divided by L: -0.61, -0.87, -0.92
  r = beam_search(model, kOneSource, o);
  EXPECT_EQ(tokens_of(r[0]), Tokens({{kB, kC}, {kA}, {}}));
  EXPECT_NEAR(r[0][0].score, bc / 3, kTol);
  EXPECT_NEAR(r[0][1].score, a / 2, kTol);
  EXPECT_NEAR(r[0][2].score, empty, kTol);
}

TEST(Search, NBestReturnsTheBestNInPenalizedOrder) {
  ScriptedModel model(three_lengths());
  auto o = plain(3, 2);
  o.length_penalty = "average";
  EXPECT_EQ(tokens_of(beam_search(model, kOneSource, o)[0]), Tokens({{kB, kC}, {kA}}));
  o.n_best = 1;
  EXPECT_EQ(tokens_of(decode(model, kOneSource, o)[0]), Tokens({{kB, kC}}));
}

TEST(Search, EqualScoresKeepTheOrderOfEnding) {
  // A, B and <eos> a third each: every output of a length ties, 31 outputs of up to 4 tokens.
  // Beam 32 ends them all, shortest first; within a step the tied <eos> candidates go by
  // beam, and the beams of a step by token, then beam: so outputs of a length end ordered
  // by their last token, then the one before, and so on. A sort that is not stable would
  // shuffle these.
  ScriptedModel model(always({{kA, 1.0 / 3}, {kB, 1.0 / 3}, {kEos, 1.0 / 3}}));
  auto o = plain(32, 31);
  o.max_length = 4;
  const auto results = beam_search(model, kOneSource, o);
  Tokens expected = {{}};
  for (size_t start = 0, length = 0; length < 4; ++length) {
    const size_t end = expected.size();
    for (int64_t token : {kA, kB})  // the beams of the next step: by token, then by beam
      for (size_t i = start; i < end; ++i) {
        expected.push_back(expected[i]);
        expected.back().push_back(token);
      }
    start = end;
  }
  ASSERT_EQ(expected.size(), 31u);
  EXPECT_EQ(tokens_of(results[0]), expected);
}

TEST(Search, EarlyStopEndsOnceBeamSizeHypothesesEnded) {
  // A 0.6, <eos> 0.4 at every step, beam 2, at most 3 tokens. With early_stop the empty output
  // (0.4) and A (0.24) end by step 1 and the search stops; without it, A A (0.144) and A A A
  // (0.0864) end too, and averaged per token they are the best: -0.612, -0.646 against
  // A's -0.714 and the empty output's -0.916.
  ScriptedModel early(always({{kA, 0.6}, {kEos, 0.4}})), late(always({{kA, 0.6}, {kEos, 0.4}}));
  auto o = plain(2, 2);
  o.max_length = 3;
  o.length_penalty = "average";
  o.early_stop = true;
  const auto stopped = beam_search(early, kOneSource, o);
  EXPECT_EQ(tokens_of(stopped[0]), Tokens({{kA}, {}}));
  EXPECT_EQ(early.rows_per_step.size(), 2u);

  o.early_stop = false;
  const auto searched = beam_search(late, kOneSource, o);
  EXPECT_EQ(tokens_of(searched[0]), Tokens({{kA, kA, kA}, {kA, kA}}));
  EXPECT_NEAR(searched[0][0].score, log_of({0.6, 0.6, 0.6, 0.4}) / 4, kTol);
  EXPECT_NEAR(searched[0][1].score, log_of({0.6, 0.6, 0.4}) / 3, kTol);
  EXPECT_EQ(late.rows_per_step.size(), 4u);  // up to the forced <eos> at the maximum

  // n_best beyond beam_size (decode() refuses it; beam_search takes it) shows every ending:
  // four without early_stop, two with it.
  o.n_best = 10;
  EXPECT_EQ(beam_search(late, kOneSource, o)[0].size(), 4u);
  o.early_stop = true;
  EXPECT_EQ(beam_search(early, kOneSource, o)[0].size(), 2u);
}

TEST(Search, ASettledSentenceStopsBeforeBeamSizeHypothesesEnd) {
  // Beam 3, n_best 1, no penalty. Step 0: A 0.6, <eos> 0.3, B 0.1. Step 1: A <eos> (0.42) ranks
  // first, above every live beam (A C 0.18, B C 0.1): no later hypothesis can beat it, so the
  // search stops there, with two hypotheses ended of the three early_stop waits for. Searching
  // on (n_best 3, which the rule cannot settle before three have ended) takes a third step and
  // finds the same best.
  const auto script = tree({{{}, {{kA, 0.6}, {kEos, 0.3}, {kB, 0.1}}},
                            {{kA}, {{kEos, 0.7}, {kC, 0.3}}},
                            {{kB}, {{kC, 1.0}}}});
  ScriptedModel settled(script), searched(script);
  const auto quick = beam_search(settled, kOneSource, plain(3, 1));
  EXPECT_EQ(tokens_of(quick[0]), Tokens({{kA}}));
  EXPECT_NEAR(quick[0][0].score, log_of({0.6, 0.7}), kTol);
  EXPECT_EQ(settled.rows_per_step, std::vector<int64_t>({3, 3}));
  const auto full = beam_search(searched, kOneSource, plain(3, 3));
  EXPECT_EQ(tokens_of(full[0]), Tokens({{kA}, {}, {kA, kC}}));
  EXPECT_EQ(searched.rows_per_step.size(), 3u);

  // With a length penalty the bound is the live beam's log-probability penalized at the
  // longest length it may reach (10 tokens and <eos>): averaged, A C can still end at
  // log(0.18) / 11 = -0.156, above A's log(0.42) / 2 = -0.434, so the search goes on.
  auto averaged = plain(3, 1);
  averaged.length_penalty = "average";
  ScriptedModel unsettled(script);
  beam_search(unsettled, kOneSource, averaged);
  EXPECT_EQ(unsettled.rows_per_step.size(), 3u);
}

TEST(Search, AbandonedSentencesLeaveTheBatchAtTheNextStep) {
  // Three sentences that would run to the maximum (A 0.9, <eos> 0.1, 10 tokens); sentence 1 is
  // abandoned once 3 steps have run. From the step after, the model sees its rows no more; its
  // result is empty and the others' equal a search without it.
  for (int64_t beam : {1, 3}) {
    ScriptedModel model(always({{kA, 0.9}, {kEos, 0.1}})), alone(always({{kA, 0.9}, {kEos, 0.1}}));
    const Tokens sources = {{5}, {6}, {7}};
    const auto& steps = model.rows_per_step;
    const Abandoned abandoned = [&steps](int64_t sentence) { return sentence == 1 && steps.size() >= 3; };
    auto opts = plain(beam, beam);
    opts.early_stop = false;  // else three hypotheses end by step 2 and the search stops
    const auto results = decode(model, sources, opts, abandoned);
    ASSERT_EQ(results.size(), 3u);
    EXPECT_TRUE(results[1].empty()) << "beam " << beam;
    const auto expected = decode(alone, {{5}, {7}}, opts);
    EXPECT_EQ(tokens_of(results[0]), tokens_of(expected[0])) << "beam " << beam;
    EXPECT_EQ(tokens_of(results[2]), tokens_of(expected[1])) << "beam " << beam;
    ASSERT_GT(steps.size(), 4u);
    EXPECT_EQ(steps[2], 3 * beam) << "three sentences up to step 3";
    EXPECT_EQ(steps[3], 2 * beam) << "two from step 4 on";
  }
  // Every sentence abandoned before the first step ends after it, with nothing decoded.
  ScriptedModel model(always({{kA, 0.9}, {kEos, 0.1}}));
  const auto none = decode(model, {{5}, {6}}, plain(2), [](int64_t) { return true; });
  EXPECT_TRUE(none[0].empty() && none[1].empty());
  EXPECT_EQ(model.rows_per_step.size(), 1u);
}

TEST(Search, PadAndBosAreNeverProduced) {
  // The model prefers <pad> and <bos>; what remains keeps its own log-prob (no renormalizing).
  ScriptedModel model(tree({{{}, {{kPad, 0.4}, {kBos, 0.3}, {kA, 0.2}, {kEos, 0.1}}},
                            {{kA}, {{kPad, 0.5}, {kBos, 0.4}, {kEos, 0.1}}}}));
  const auto greedy = greedy_search(model, kOneSource, plain(1));
  EXPECT_EQ(greedy[0][0].tokens, std::vector<int64_t>({kA}));
  EXPECT_NEAR(greedy[0][0].log_prob, log_of({0.2, 0.1}), kTol);

  const auto beam = beam_search(model, kOneSource, plain(2, 2));
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{}, {kA}}));
  EXPECT_NEAR(beam[0][0].log_prob, log_of({0.1}), kTol);
  EXPECT_NEAR(beam[0][1].log_prob, log_of({0.2, 0.1}), kTol);
}

// Every output of `sentence` up to max_len tokens (then <eos> is forced) with its log-prob.
void enumerate(int64_t sentence, std::vector<int64_t>& prefix, double log_prob, int64_t max_len,
               std::vector<std::pair<std::vector<int64_t>, double>>& out) {
  for (const auto& [token, prob] : hashed(sentence, prefix)) {
    if (token == kEos) {
      out.emplace_back(prefix, log_prob + std::log(prob));
    } else if (static_cast<int64_t>(prefix.size()) < max_len) {
      prefix.push_back(token);
      enumerate(sentence, prefix, log_prob + std::log(prob), max_len, out);
      prefix.pop_back();
    }
  }
}

TEST(Search, ExhaustiveBeamMatchesBruteForceEnumeration) {
  // Two tokens and <eos>, at most 3 tokens: 1 + 2 + 4 + 8 = 15 outputs, and never more than
  // 12 candidates a step. Beam 16 keeps them all, so its n-best is every output, ranked.
  ScriptedModel model(hashed);
  auto o = plain(16, 15);
  o.length_penalty = "gnmt";
  o.max_length = 3;
  const auto results = decode(model, {{5, 6}, {7}}, o);
  for (int64_t s = 0; s < 2; ++s) {
    std::vector<std::pair<std::vector<int64_t>, double>> all;
    std::vector<int64_t> prefix;
    enumerate(s, prefix, 0.0, 3, all);
    ASSERT_EQ(all.size(), 15u);
    std::map<std::vector<int64_t>, double> log_prob_of(all.begin(), all.end());
    std::vector<double> penalized;
    for (const auto& [tokens, lp] : all) penalized.push_back(lp / std::pow((5.0 + tokens.size() + 1) / 6.0, 0.6));
    std::sort(penalized.rbegin(), penalized.rend());
    ASSERT_EQ(results[s].size(), 15u) << "sentence " << s;
    for (size_t i = 0; i < 15; ++i) {
      const auto& h = results[s][i];
      ASSERT_TRUE(log_prob_of.count(h.tokens)) << "sentence " << s << ", hypothesis " << i;
      EXPECT_NEAR(h.log_prob, log_prob_of[h.tokens], kTol);
      EXPECT_NEAR(h.score, penalized[i], kTol) << "sentence " << s << ", rank " << i;
      log_prob_of.erase(h.tokens);  // each output once
    }
  }
}

TEST(Search, NoRepeatNgramTakesTheNextTokenWithoutRenormalizing) {
  // A 0.5, B 0.3, <eos> 0.2 after every prefix. Free, greedy repeats A to the maximum; with
  // no token twice it takes A, then B at its own 0.3 (not 0.3 / 0.5), then <eos>.
  ScriptedModel model(always({{kA, 0.5}, {kB, 0.3}, {kEos, 0.2}}));
  auto o = plain(1);
  o.max_length = 4;
  EXPECT_EQ(decode(model, kOneSource, o)[0][0].tokens, std::vector<int64_t>({kA, kA, kA, kA}));
  o.no_repeat_ngram_size = 1;
  const auto greedy = decode(model, kOneSource, o)[0][0];
  EXPECT_EQ(greedy.tokens, std::vector<int64_t>({kA, kB}));
  EXPECT_NEAR(greedy.log_prob, log_of({0.5, 0.3, 0.2}), kTol);

  // Beam 2: after <bos> the beams are A and B (<eos> ranks third); then BA and AB tie at
  // 0.15 (BA first: its new token has the lower id) ahead of A<eos> at 0.1; then only
  // <eos> is left to either, and both end.
  o = plain(2, 2);
  o.no_repeat_ngram_size = 1;
  const auto beam = decode(model, kOneSource, o)[0];
  EXPECT_EQ(tokens_of(beam), Tokens({{kB, kA}, {kA, kB}}));
  for (const auto& h : beam) EXPECT_NEAR(h.log_prob, log_of({0.5, 0.3, 0.2}), kTol);

  // Bigrams: A A, then B (A would repeat "A A"), A, and then both A ("A A") and B ("A B")
  // would repeat a pair: <eos>.
  o = plain(1);
  o.no_repeat_ngram_size = 2;
  EXPECT_EQ(decode(model, kOneSource, o)[0][0].tokens, std::vector<int64_t>({kA, kA, kB, kA}));
}

TEST(Search, BatchGivesEachSentenceItsResultAlone) {
  const std::vector<std::vector<int64_t>> sources = {{5, 6, 7, 8}, {9}, {4, 4, 4, 4, 4, 4, 4}, {6, 7}};
  ScriptedModel model(hashed);
  for (int64_t beam : {1, 3}) {
    auto o = plain(beam, beam);
    o.length_penalty = "gnmt";
    o.max_length_ratio = 1.5;
    o.max_length_extra = 1;
    const auto together = decode(model, sources, o);
    ASSERT_EQ(together.size(), sources.size());
    for (size_t i = 0; i < sources.size(); ++i) {
      // The script reads the sentence index: alone, sentence i is sentence 0 of its batch, so
      // it runs with a script that shifts the index back.
      ScriptedModel single([i](int64_t, const std::vector<int64_t>& prefix) {
        return hashed(static_cast<int64_t>(i), prefix);
      });
      const auto alone = decode(single, {sources[i]}, o);
      ASSERT_EQ(alone[0].size(), together[i].size()) << "sentence " << i << ", beam " << beam;
      for (size_t h = 0; h < alone[0].size(); ++h) {
        EXPECT_EQ(alone[0][h].tokens, together[i][h].tokens) << "sentence " << i << ", beam " << beam;
        EXPECT_EQ(alone[0][h].score, together[i][h].score) << "sentence " << i << ", beam " << beam;
      }
    }
  }
}

TEST(Search, FinishedSentencesLeaveTheBatch) {
  // Sentence 0 ends at once (<eos> 0.9); sentence 1 runs to its limit of 3 tokens.
  auto script = [](int64_t sentence, const std::vector<int64_t>& prefix) {
    if (sentence == 0) return Dist{{kEos, 0.9}, {kA, 0.1}};
    return prefix.empty() || prefix.back() == kA ? Dist{{kA, 0.6}, {kB, 0.3}, {kEos, 0.1}}
                                                 : Dist{{kA, 0.5}, {kEos, 0.5}};
  };
  auto o = plain(1);
  o.max_length = 3;
  ScriptedModel greedy_model(script);
  const auto greedy = greedy_search(greedy_model, {{5}, {5}}, o);
  EXPECT_EQ(greedy_model.rows_per_step, std::vector<int64_t>({2, 1, 1, 1}));
  EXPECT_EQ(greedy[0][0].tokens, std::vector<int64_t>{});
  EXPECT_EQ(greedy[1][0].tokens, std::vector<int64_t>({kA, kA, kA}));
  EXPECT_NEAR(greedy[1][0].log_prob, log_of({0.6, 0.6, 0.6, 0.1}), kTol);

  // Beam 2: sentence 0 ends its two hypotheses (empty 0.9, A 0.09) by step 1.
  o.beam_size = 2;
  o.n_best = 2;
  ScriptedModel beam_model(script);
  const auto beam = beam_search(beam_model, {{5}, {5}}, o);
  EXPECT_EQ(beam_model.rows_per_step, std::vector<int64_t>({4, 4, 2, 2}));
  EXPECT_EQ(tokens_of(beam[0]), Tokens({{}, {kA}}));
  EXPECT_EQ(tokens_of(beam[1]), Tokens({{kA, kA, kB}, {kA, kA, kA}}));  // 0.054 and 0.0216
}

TEST(Search, ReorderMovesTheRowsAndTheCachesFilledPositions) {
  State state;
  state.rows["sentence"] = at::tensor({0, 1, 2}, at::kLong);
  // Three rows, capacity 4, positions 0 and 1 written.
  state.caches["k"] = at::arange(3 * 4 * 2, at::kFloat).view({3, 4, 2});
  state.cached = 2;
  const auto before = state.caches["k"].clone();
  reorder(state, at::tensor({2, 2, 0, 1}, at::kLong));
  EXPECT_TRUE(at::equal(state.rows["sentence"], at::tensor({2, 2, 0, 1}, at::kLong)));
  const auto& k = state.caches["k"];
  EXPECT_EQ(k.sizes(), at::IntArrayRef({4, 4, 2}));  // the capacity kept
  const int64_t expected[] = {2, 2, 0, 1};
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_TRUE(at::equal(k[i].narrow(0, 0, 2), before[expected[i]].narrow(0, 0, 2))) << "row " << i;
  EXPECT_THROW(reorder(state, at::tensor({4}, at::kLong)), std::exception);
}

TEST(Search, DecodeRejectsBadSources) {
  ScriptedModel model(hashed, /*max_source=*/3);
  const auto o = plain(2);
  expect_message([&] { decode(model, {{5}, {}}, o); }, "sentence 2 is empty; an empty source has no translation");
  expect_message([&] { decode(model, {{5, 10}}, o); },
                 "sentence 1 holds token id 10: source ids must be 1 (<unk>) or within 4..9 "
                 "(<pad>, <bos> and <eos> are placed by the engine)");
  for (int64_t id : {-1, 0, 2, 3}) {  // the specials other than <unk>, and no id at all
    try {
      decode(model, {{4}, {5}, {6, id}}, o);
      ADD_FAILURE() << "id " << id << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("sentence 3 holds token id " + std::to_string(id) + ":", 0), 0u)
          << e.what();
    }
  }
  expect_message([&] { decode(model, {{5, 6, 7, 8}}, o); },
                 "sentence 1 has 4 tokens; this model reads at most 3 (its max_positions, counting the <eos>)");
  EXPECT_EQ(decode(model, {{1, 9}}, o).size(), 1u);  // <unk> and the last id are fine
  EXPECT_TRUE(decode(model, {}, o).empty());
}

TEST(Search, ValidateOptionsNamesTheBadOption) {
  auto message = [](auto change, const std::string& expected) {
    auto o = plain(2);
    change(o);
    expect_message([&] { validate_options(o); }, expected);
  };
  message([](DecodeOptions& o) { o.beam_size = 0; }, "DecodingOptions.beam_size must be >= 1, got 0");
  message([](DecodeOptions& o) { o.beam_size = 257; }, "DecodingOptions.beam_size must be <= 256, got 257");
  message([](DecodeOptions& o) { o.n_best = 3; }, "DecodingOptions.n_best=3 must be between 1 and beam_size=2");
  message([](DecodeOptions& o) { o.n_best = 0; }, "DecodingOptions.n_best=0 must be between 1 and beam_size=2");
  message([](DecodeOptions& o) { o.length_penalty = "wu"; },
          "DecodingOptions.length_penalty='wu' is not valid; choose one of 'none', 'gnmt', 'average'");
  message([](DecodeOptions& o) { o.min_length = -1; }, "DecodingOptions.min_length must be >= 0, got -1");
  message([](DecodeOptions& o) { o.alpha = -0.5; }, "DecodingOptions.alpha must be >= 0, got -0.5");
  message([](DecodeOptions& o) { o.min_length_ratio = -2.0; }, "DecodingOptions.min_length_ratio must be >= 0, got -2.0");
  message([](DecodeOptions& o) { o.max_length_ratio = std::numeric_limits<double>::infinity(); },
          "DecodingOptions.max_length_ratio must be a finite number, got inf");
  message([](DecodeOptions& o) { o.max_length = 0; }, "DecodingOptions.max_length must be >= 1, got 0");
  message([](DecodeOptions& o) { o.no_repeat_ngram_size = -2; },
          "DecodingOptions.no_repeat_ngram_size must be >= 0, got -2");
  EXPECT_NO_THROW(validate_options(plain(2, 2)));

  // decode() checks the options before anything else.
  ScriptedModel model(hashed);
  auto zero = plain(1);
  zero.beam_size = 0;
  expect_message([&] { decode(model, kOneSource, zero); }, "DecodingOptions.beam_size must be >= 1, got 0");
  EXPECT_TRUE(model.rows_per_step.empty());
}

}  // namespace
}  // namespace seq2seq
