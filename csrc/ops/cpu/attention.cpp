// The fused attention ops of a decode step on the CPU: one query row against its source
// (the RNN scores) or against its cached keys/values (multi-head), masked softmax and the
// context in one pass per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vec.h"

namespace seq2seq {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query_in, const at::Tensor& keys_in,
                                             const at::Tensor& memory_in, const at::Tensor& lengths_in,
                                             const at::Tensor& sentence_in, const std::optional<at::Tensor>& v_in) {
  check_float(query_in, "query", 2);
  check_float(keys_in, "keys", 3);
  check_float(memory_in, "memory", 3);
  check(lengths_in.scalar_type() == at::kLong && lengths_in.dim() == 1, "lengths must be a 1-d int64 tensor");
  check(sentence_in.scalar_type() == at::kLong && sentence_in.dim() == 1, "sentence must be a 1-d int64 tensor");
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), memory = memory_in.contiguous();
  const auto lengths = lengths_in.contiguous(), sentence = sentence_in.contiguous();
  const int64_t R = query.size(0), K = query.size(1), N = keys.size(0), S = keys.size(1), M = memory.size(2);
  check(keys.size(2) == K, "keys' last dimension must equal the query's");
  check(memory.size(0) == N && memory.size(1) == S, "memory must be (sentences, source length, M) like keys");
  check(lengths.size(0) == N, "lengths must have one entry per sentence");
  check(sentence.size(0) == R, "sentence must have one entry per query row");
  const float* v = nullptr;
  at::Tensor v_c;
  if (v_in.has_value()) {
    check_float(*v_in, "v", 1);
    check(v_in->size(0) == K, "v must have the query's size");
    v_c = v_in->contiguous();
    v = v_c.data_ptr<float>();
  }
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* sent = sentence.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) check(len[n] >= 1 && len[n] <= S, "lengths must be within 1..source length");
  for (int64_t r = 0; r < R; ++r) check(sent[r] >= 0 && sent[r] < N, "sentence ids must be within 0..sentences-1");

  // Written whole below, padding included: no zero-filling pass first.
  auto context = at::empty({R, M}, query.options());
  auto weights = at::empty({R, S}, query.options());
  const float *q_all = query.data_ptr<float>(), *k_all = keys.data_ptr<float>(), *m_all = memory.data_ptr<float>();
  float *c_all = context.data_ptr<float>(), *w_all = weights.data_ptr<float>();
  at::parallel_for(0, R, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = sent[r], L = len[n];
      const float* q = q_all + r * K;
      const float* keys_n = k_all + n * S * K;
      const float* mem_n = m_all + n * S * M;
      float* w = w_all + r * S;
      float best = kNegInf;
      for (int64_t s = 0; s < L; ++s) {
        const float* k = keys_n + s * K;
        float acc = 0.f;
        if (v) {
          for (int64_t a = 0; a < K; ++a) acc += v[a] * tanh_rational(k[a] + q[a]);
        } else {
          for (int64_t a = 0; a < K; ++a) acc += k[a] * q[a];
        }
        w[s] = acc;
        best = std::max(best, acc);
      }
      float sum = 0.f;
      for (int64_t s = 0; s < L; ++s) {
        w[s] = std::exp(w[s] - best);
        sum += w[s];
      }
      std::fill(w + L, w + S, 0.f);
      float* c = c_all + r * M;
      std::fill(c, c + M, 0.f);
      for (int64_t s = 0; s < L; ++s) {
        w[s] /= sum;
        const float ws = w[s];
        const float* m = mem_n + s * M;
        for (int64_t j = 0; j < M; ++j) c[j] += ws * m[j];
      }
    }
  });
  return {context, weights};
}


std::tuple<at::Tensor, at::Tensor> multi_head_attention(const at::Tensor& query_in, const at::Tensor& keys_in,
                                                        const at::Tensor& values_in, const at::Tensor& lengths_in,
                                                        const std::optional<at::Tensor>& sentence_in, int64_t heads) {
  check_float(query_in, "query", 2);
  check_float(keys_in, "keys", 3);
  check_float(values_in, "values", 3);
  check(lengths_in.scalar_type() == at::kLong && lengths_in.dim() == 1, "lengths must be a 1-d int64 tensor");
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const auto lengths = lengths_in.contiguous();
  const int64_t R = query.size(0), D = query.size(1), B = keys.size(0), T = keys.size(1);
  check(heads >= 1 && D % heads == 0, "heads must divide the query's size");
  check(keys.size(2) == D && values.sizes() == keys.sizes(), "keys and values must be (blocks, length, query size)");
  check(lengths.size(0) == B, "lengths must have one entry per block of keys");
  at::Tensor sentence;
  if (sentence_in.has_value()) {
    check(sentence_in->scalar_type() == at::kLong && sentence_in->dim() == 1 && sentence_in->size(0) == R,
          "sentence must be a 1-d int64 tensor with one entry per query row");
    sentence = sentence_in->contiguous();
  } else {
    check(B == R, "without sentence, keys need one block per query row");
  }
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* sent = sentence.defined() ? sentence.data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; b < B; ++b) check(len[b] >= 1 && len[b] <= T, "lengths must be within 1..key length");
  if (sent)
    for (int64_t r = 0; r < R; ++r) check(sent[r] >= 0 && sent[r] < B, "sentence ids must be within 0..blocks-1");

  const int64_t dh = D / heads;
  const float scale = static_cast<float>(std::sqrt(static_cast<double>(dh)));
  // Written whole below, padding included: no zero-filling pass first.
  auto context = at::empty({R, D}, query.options());
  auto weights = at::empty({R, heads, T}, query.options());
  const float *q_all = query.data_ptr<float>(), *k_all = keys.data_ptr<float>(), *v_all = values.data_ptr<float>();
  float *c_all = context.data_ptr<float>(), *w_all = weights.data_ptr<float>();
  at::parallel_for(0, R * heads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / heads, h = i % heads, b = sent ? sent[r] : r, L = len[b];
      const float* q = q_all + r * D + h * dh;
      const float* k = k_all + b * T * D + h * dh;
      const float* v = v_all + b * T * D + h * dh;
      float* w = w_all + i * T;
      float best = kNegInf;
      for (int64_t s = 0; s < L; ++s) {
        w[s] = dot(q, k + s * D, dh) / scale;  // as q k^T / sqrt(d) in seq2seq/models.py
        best = std::max(best, w[s]);
      }
      float sum = 0.f;
      for (int64_t s = 0; s < L; ++s) {
        w[s] = std::exp(w[s] - best);
        sum += w[s];
      }
      std::fill(w + L, w + T, 0.f);
      float* c = c_all + r * D + h * dh;
      std::fill(c, c + dh, 0.f);
      for (int64_t s = 0; s < L; ++s) {
        w[s] /= sum;
        const float ws = w[s];
        const float* vs = v + s * D;
        for (int64_t j = 0; j < dh; ++j) c[j] += ws * vs[j];
      }
    }
  });
  return {context, weights};
}

}  // namespace
}  // namespace cpu
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("attention", &seq2seq::cpu::attention);
  m.impl("multi_head_attention", &seq2seq::cpu::multi_head_attention);
}
