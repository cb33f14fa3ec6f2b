// beam_candidates' body (ops/ops.h): one block a beam block. Each row's max and log-sum-exp
// first, kept in shared memory; then `count` rounds over the block's group x V candidates,
// round r taking the best candidate after round r - 1's in the order (value descending,
// index ascending), so that nothing is marked and no thread keeps a list. The values are
// the CPU kernel's arithmetic on the same max and a log-sum within float rounding of its, so
// exact ties (equal logits, equal rows) stay ties and break the same way.
#pragma once

#include <cmath>

#include "simt.h"

namespace seq2seq {
namespace simt {

// A double (the sums), an index and a float (the maxima, the best values) per warp, then
// each row's max and log-sum; the 8-byte arrays first, so that all are aligned.
constexpr size_t beam_candidates_shared_bytes(int threads, int64_t group) {
  return static_cast<size_t>(threads / kWarp) * (sizeof(double) + sizeof(int64_t) + sizeof(float)) +
         static_cast<size_t>(group) * 2 * sizeof(float);
}

// Whether (value, index) comes before (other_value, other_index) among the candidates.
SIMT_FN bool beam_before(float value, int64_t index, float other_value, int64_t other_index) {
  return value > other_value || (value == other_value && index < other_index);
}

template <class Simt>
SIMT_FN void beam_candidates_body(const Simt& simt, const float* logits, const float* row_scores,
                                  const int8_t* eos_rule, const int64_t* banned, int64_t banned_count,
                                  int64_t V, int64_t eos, int64_t group, int64_t count,
                                  float* out_scores, int64_t* out_index) {
  const float neg_inf = -INFINITY;
  const int64_t first_row = simt.block() * group, step = simt.threads();
  const int warps = simt.threads() / kWarp, warp = simt.thread() / kWarp, lane = simt.thread() % kWarp;
  double* sums = simt.template shared<double>();
  int64_t* warp_index = reinterpret_cast<int64_t*>(sums + warps);
  float* warp_value = reinterpret_cast<float*>(warp_index + warps);
  float* row_max = warp_value + warps;
  float* row_log_sum = row_max + group;

  // The row and the score are the same for every thread: the branches are the block's, and
  // every thread meets the same barriers.
  for (int64_t g = 0; g < group; ++g) {
    if (row_scores[first_row + g] == neg_inf) continue;  // dead: never read
    const float* x = logits + (first_row + g) * V;
    float m = neg_inf;
    for (int64_t t = simt.thread(); t < V; t += step) m = x[t] > m ? x[t] : m;
    const float mx = block_max(simt, m, warp_value);
    // In double, as the CPU kernel joins its partial sums: a float sum over a large
    // vocabulary drifts by 1e-5.
    double part = 0.0;
    for (int64_t t = simt.thread(); t < V; t += step) part += ::expf(x[t] - mx);
    const double sum = block_sum(simt, part, sums);
    if (simt.thread() == 0) {
      row_max[g] = mx;
      row_log_sum[g] = static_cast<float>(::log(sum));
    }
  }
  simt.sync();

  float* best_out = out_scores + simt.block() * count;
  int64_t* index_out = out_index + simt.block() * count;
  // Before every candidate: round 0 may take any.
  float last_value = INFINITY;
  int64_t last_index = -1;
  for (int64_t k = 0; k < count; ++k) {
    float best = neg_inf;
    int64_t best_index = -1;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = first_row + g;
      const float start = row_scores[r];
      if (start == neg_inf) continue;
      const float* x = logits + r * V;
      const float mx = row_max[g], log_sum = row_log_sum[g];
      const int rule = eos_rule[r];
      // Rule 2 offers <eos> alone (thread 0 looks at it), banned or not, as the CPU kernel does.
      const int64_t end = rule == 2 ? eos + 1 : V;
      for (int64_t t = rule == 2 ? eos + simt.thread() : simt.thread(); t < end; t += step) {
        const float value = start + ((x[t] - mx) - log_sum);
        const int64_t index = t * group + g;
        // The cheap tests first: few candidates beat the thread's best, fewer are banned.
        if (value == neg_inf || !beam_before(last_value, last_index, value, index) ||
            !beam_before(value, index, best, best_index))
          continue;
        bool allowed = rule != 1 || t != eos;
        for (int64_t b = 0; rule != 2 && allowed && b < banned_count; ++b) allowed = banned[b] != t;
        if (allowed) {
          best = value;
          best_index = index;
        }
      }
    }
    for (int mask = kWarp / 2; mask > 0; mask /= 2) {
      const float other = simt.shuffle_xor(best, mask);
      const int64_t other_index = simt.shuffle_xor(best_index, mask);
      if (beam_before(other, other_index, best, best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    if (lane == 0) {
      warp_value[warp] = best;
      warp_index[warp] = best_index;
    }
    simt.sync();
    for (int w = 0; w < warps; ++w)
      if (beam_before(warp_value[w], warp_index[w], best, best_index)) {
        best = warp_value[w];
        best_index = warp_index[w];
      }
    simt.sync();  // read by all before the next round writes
    // The order is total, so every thread holds the same best, and leaves together.
    if (best == neg_inf) {
      if (simt.thread() == 0)
        for (int64_t j = k; j < count; ++j) {
          best_out[j] = neg_inf;
          index_out[j] = -1;
        }
      break;
    }
    if (simt.thread() == 0) {
      best_out[k] = best;
      index_out[k] = best_index;
    }
    last_value = best;
    last_index = best_index;
  }
}

}  // namespace simt
}  // namespace seq2seq
