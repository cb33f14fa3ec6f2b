// The bodies of attention and multi_head_attention (ops/ops.h): one block a query row (a row
// and head), the scores of its positions in shared memory. A sum that one thread makes runs in
// the CPU kernel's order (ops/cpu/attention.cpp), a context column in ascending position, so
// that the two agree to float rounding; only the softmax's sum is the block's, in a tree.
#pragma once

#include <cmath>

#include "simt.h"

namespace seq2seq {
namespace simt {

// The scores of one row, then a float per warp.
constexpr size_t attention_shared_bytes(int threads, int64_t S) {
  return sizeof(float) * (static_cast<size_t>(S) + threads / kWarp);
}

constexpr size_t multi_head_attention_shared_bytes(int threads, int64_t T) { return attention_shared_bytes(threads, T); }

// What both ops do once the score of a position is known: score(s) for s < L into shared
// memory, the softmax, weights[0, S) (zero from L on) and context[j] = sum over s < L of
// weight[s] * values[s * stride + j] for j < width. Nothing at or past L is read: a cache
// may hold NaN there.
template <class Simt, class Score>
SIMT_FN void softmax_context(const Simt& simt, const Score& score, int64_t L, int64_t S, const float* values,
                             int64_t stride, int64_t width, float* context, float* weights) {
  const int64_t step = simt.threads();
  float* w = simt.template shared<float>();
  float* scratch = w + S;
  float best = -INFINITY;
  for (int64_t s = simt.thread(); s < L; s += step) {
    w[s] = score(s);
    best = w[s] > best ? w[s] : best;
  }
  best = block_max(simt, best, scratch);
  // Each thread rereads only the scores it wrote until the barrier in block_sum.
  float part = 0.f;
  for (int64_t s = simt.thread(); s < L; s += step) {
    w[s] = ::expf(w[s] - best);
    part += w[s];
  }
  const float sum = block_sum(simt, part, scratch);
  // Divided, not multiplied by 1 / sum, as the CPU kernel rounds it.
  for (int64_t s = simt.thread(); s < S; s += step) {
    const float ws = s < L ? w[s] / sum : 0.f;
    if (s < L) w[s] = ws;
    weights[s] = ws;
  }
  simt.sync();  // every column reads every thread's weights
  for (int64_t j = simt.thread(); j < width; j += step) {
    float acc = 0.f;
    for (int64_t s = 0; s < L; ++s) acc += w[s] * values[s * stride + j];
    context[j] = acc;
  }
}

template <class Simt>
SIMT_FN void attention_body(const Simt& simt, const float* query, const float* keys, const float* memory,
                            const int64_t* lengths, const int64_t* sentence, const float* v, int64_t K, int64_t S,
                            int64_t M, float* context, float* weights) {
  const int64_t r = simt.block(), n = sentence[r];
  const float* q = query + r * K;
  const float* keys_n = keys + n * S * K;
  const auto score = [&](int64_t s) {
    const float* k = keys_n + s * K;
    float acc = 0.f;
    if (v) {
      for (int64_t a = 0; a < K; ++a) acc += v[a] * ::tanhf(k[a] + q[a]);
    } else {
      for (int64_t a = 0; a < K; ++a) acc += k[a] * q[a];
    }
    return acc;
  };
  softmax_context(simt, score, lengths[n], S, memory + n * S * M, M, M, context + r * M, weights + r * S);
}

template <class Simt>
SIMT_FN void multi_head_attention_body(const Simt& simt, const float* query, const float* keys,
                                       const float* values, const int64_t* lengths, const int64_t* sentence,
                                       int64_t D, int64_t T, int64_t heads, float* context, float* weights) {
  const int64_t i = simt.block(), r = i / heads, h = i % heads, b = sentence ? sentence[r] : r, dh = D / heads;
  // sqrtf is correctly rounded, so this is the CPU kernel's float(sqrt(double(dh))) without a double.
  const float scale = ::sqrtf(static_cast<float>(dh));
  const float* q = query + r * D + h * dh;
  const float* k = keys + b * T * D + h * dh;
  const auto score = [&](int64_t s) {
    float acc = 0.f;
    for (int64_t a = 0; a < dh; ++a) acc += q[a] * k[s * D + a];
    return acc / scale;
  };
  softmax_context(simt, score, lengths[b], T, values + b * T * D + h * dh, D, dh, context + r * D + h * dh,
                  weights + i * T);
}

}  // namespace simt
}  // namespace seq2seq
