// Log-softmax, the length rules, the beam scores and the top-k over beam x vocabulary in one
// pass per row, on the CPU.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "vec.h"

namespace seq2seq {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits_in, const at::Tensor& scores_in,
                                                   const at::Tensor& rule_in, at::IntArrayRef banned,
                                                   int64_t eos, int64_t group, int64_t count) {
  checks::beam_candidates(logits_in, scores_in, rule_in, banned, eos, group, count);
  const auto logits = logits_in.contiguous(), row_scores = scores_in.contiguous(), rule = rule_in.contiguous();
  const int64_t R = logits.size(0), V = logits.size(1);
  std::vector<char> allowed(V, 1);
  for (int64_t b : banned) allowed[b] = 0;
  const int64_t blocks = R / group;
  auto out_scores = at::full({blocks, count}, kNegInf, logits.options());
  auto out_index = at::full({blocks, count}, -1, logits.options().dtype(at::kLong));
  const float *x_all = logits.data_ptr<float>(), *base = row_scores.data_ptr<float>();
  const int8_t* rules = rule.data_ptr<int8_t>();
  float* best_all = out_scores.data_ptr<float>();
  int64_t* index_all = out_index.data_ptr<int64_t>();

  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      float* best = best_all + blk * count;
      int64_t* index = index_all + blk * count;
      int64_t filled = 0;
      // Insert keeping best-first order; ties to the lower index (token-major, then row).
      auto offer = [&](float value, int64_t idx) {
        if (filled == count && !(value > best[count - 1] || (value == best[count - 1] && idx < index[count - 1])))
          return;
        int64_t pos = filled < count ? filled++ : count - 1;
        while (pos > 0 && (value > best[pos - 1] || (value == best[pos - 1] && idx < index[pos - 1]))) {
          best[pos] = best[pos - 1];
          index[pos] = index[pos - 1];
          --pos;
        }
        best[pos] = value;
        index[pos] = idx;
      };
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = blk * group + g;
        const float start = base[r];
        if (start == kNegInf) continue;  // a dead beam: every candidate is -inf
        const float* x = x_all + r * V;
        const float mx = row_max(x, V);
        const float log_sum = row_log_sum_exp(x, V, mx);
        auto value_of = [&](int64_t t) { return start + ((x[t] - mx) - log_sum); };
        auto consider = [&](int64_t t) {
          const float value = value_of(t);
          if (value != kNegInf && allowed[t] && !(t == eos && rules[r] == 1)) offer(value, t * group + g);
        };
        if (rules[r] == 2) {
          if (value_of(eos) != kNegInf) offer(value_of(eos), eos * group + g);
          continue;
        }
        // Most tokens cannot enter a full list: a register of them is ruled out at once, by value,
        // before any is looked at one by one.
        int64_t t = 0;
        for (; t + kLanes <= V; t += kLanes) {
          const float worst = filled == count ? best[count - 1] : kNegInf;
          const vfloat values = start + ((load_lanes(x + t) - mx) - log_sum);
          if (!any_lane(values >= worst)) continue;
          for (int64_t j = 0; j < kLanes; ++j) consider(t + j);
        }
        for (; t < V; ++t) consider(t);
      }
    }
  });
  return {out_scores, out_index};
}

}  // namespace
}  // namespace cpu
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) { m.impl("beam_candidates", &seq2seq::cpu::beam_candidates); }
