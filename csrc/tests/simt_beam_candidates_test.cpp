// beam_candidates' CUDA body (ops/cuda/beam_candidates.cuh) run on the host through
// simt_host.h, against the CPU op: the same candidates in the same order, ties included, on
// vocabularies no block divides and on ones smaller than the list asked for.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cuda/beam_candidates.cuh"
#include "ops/cuda/simt_host.h"
#include "ops/ops.h"

namespace seq2seq {
namespace {

using simt::Host;

struct BeamCase {
  int64_t blocks, group, V, count;
  int threads;
  bool rules;    // ties, length rules, banned tokens and dead rows; random rows alone otherwise
  bool ban_eos;  // rule 2 still offers it
};

class BeamCandidates : public ::testing::TestWithParam<BeamCase> {};

TEST_P(BeamCandidates, MatchesTheCpuOp) {
  const auto c = GetParam();
  const int64_t R = c.blocks * c.group, eos = 2;
  at::manual_seed(c.V + c.count);
  // Spread wide enough that no two candidates of different values are within rounding.
  auto logits = at::randn({R, c.V}) * 3, row_scores = at::randn({R}) * 2 - 5;
  auto eos_rule = at::zeros({R}, at::kChar);
  std::vector<int64_t> banned;
  if (c.rules) {
    banned = {0, c.V - 2};
    if (c.ban_eos) banned.push_back(eos);
    // A banned token above every other, so that the lists show whether it was left out.
    logits.select(1, c.V - 2).fill_(14.f);
    for (int64_t r = 0; r < R; ++r) {
      auto row = logits[r];
      if (r % 4 == 0) {  // two tokens of one value, at the top of the allowed
        row[1] = 12.f;
        row[c.V - 1] = 12.f;
      } else if (r % 4 == 1 && r % c.group > 0) {  // the row above again: ties across rows
        row.copy_(logits[r - 1]);
        row_scores[r] = row_scores[r - 1];
      } else if (r % 4 == 2) {  // <eos> would lead, but is forbidden
        eos_rule[r] = 1;
        row[eos] = 15.f;
      } else if (r % 4 == 3) {  // only <eos>, a strong one
        eos_rule[r] = 2;
        row[eos] = 13.f;
      }
    }
    // A block of dead beams (every slot missing), and a dead beam beside live ones.
    if (c.blocks > 1) row_scores.slice(0, R - c.group).fill_(-INFINITY);
    if (c.group >= 5) row_scores[c.group - 1] = -INFINITY;
  }
  const auto [want, want_index] = beam_candidates(logits, row_scores, eos_rule, banned, eos, c.group, c.count);
  auto scores = at::empty({c.blocks, c.count}), index = at::empty({c.blocks, c.count}, at::kLong);
  simt::run_on_host(static_cast<int>(c.blocks), c.threads, simt::beam_candidates_shared_bytes(c.threads, c.group),
                    [&](const Host& h) {
                      simt::beam_candidates_body(h, logits.data_ptr<float>(), row_scores.data_ptr<float>(),
                                                 eos_rule.data_ptr<int8_t>(), banned.data(),
                                                 static_cast<int64_t>(banned.size()), c.V, eos, c.group, c.count,
                                                 scores.data_ptr<float>(), index.data_ptr<int64_t>());
                    });
  EXPECT_TRUE(at::equal(index, want_index)) << index << want_index;
  EXPECT_TRUE(at::allclose(scores, want, 0.0, 1e-5)) << scores << want;
}

// Vocabularies of 32,000 plus an odd number and of 5 (lists of every candidate and longer),
// one candidate and all of them, a warp and 8 warps a block.
INSTANTIATE_TEST_SUITE_P(Sizes, BeamCandidates,
                         ::testing::Values(BeamCase{3, 5, 32003, 10, 256, true, false},
                                           BeamCase{2, 4, 32003, 1, 32, true, true},
                                           BeamCase{1, 3, 5, 15, 32, false, false},
                                           BeamCase{3, 4, 5, 23, 64, true, true},
                                           BeamCase{2, 2, 40, 80, 32, true, false},
                                           BeamCase{1, 1, 1001, 7, 32, false, false}));

}  // namespace
}  // namespace seq2seq
