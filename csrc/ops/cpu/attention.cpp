// The fused attention ops of a decode step on the CPU: one query row against its source
// (the RNN scores) or against its cached keys/values (multi-head), masked softmax and the
// context in one pass per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "vec.h"

namespace seq2seq {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query_in, const at::Tensor& keys_in,
                                             const at::Tensor& memory_in, const at::Tensor& lengths_in,
                                             const at::Tensor& sentence_in, const std::optional<at::Tensor>& v_in) {
  checks::attention(query_in, keys_in, memory_in, lengths_in, sentence_in, v_in);
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), memory = memory_in.contiguous();
  const auto lengths = lengths_in.contiguous(), sentence = sentence_in.contiguous();
  const int64_t R = query.size(0), K = query.size(1), S = keys.size(1), M = memory.size(2);
  const float* v = nullptr;
  at::Tensor v_c;
  if (v_in.has_value()) {
    v_c = v_in->contiguous();
    v = v_c.data_ptr<float>();
  }
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* sent = sentence.data_ptr<int64_t>();

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
  checks::multi_head_attention(query_in, keys_in, values_in, lengths_in, sentence_in, heads);
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const auto lengths = lengths_in.contiguous();
  const int64_t R = query.size(0), D = query.size(1), T = keys.size(1);
  const at::Tensor sentence = sentence_in.has_value() ? sentence_in->contiguous() : at::Tensor();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* sent = sentence.defined() ? sentence.data_ptr<int64_t>() : nullptr;

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
