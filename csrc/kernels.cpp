#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/Utils.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace seq2seq {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A rational approximation of tanh accurate to a few float ulp (the form Eigen uses); unlike
// std::tanh it has no branches, so the compiler vectorizes the loops that call it.
inline float tanh_rational(float x) {
  x = std::min(7.90531110763549805f, std::max(-7.90531110763549805f, x));
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}

// 16 floats, as one AVX-512 register (two AVX2 ones on a machine without it): GCC's vector
// extensions, so that the row loops below run 16 lanes at a time whatever the compiler's
// own vectorizer decides.
// Without AVX-512 (SEQ2SEQ_PORTABLE=1) GCC warns that passing these by value has another ABI;
// every function taking them is internal to this file, so no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

inline f32x16 load16(const float* x) {
  f32x16 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// exp(x) for x <= 0, within 2 float ulp of std::exp: Cephes' polynomial on x - n ln 2,
// scaled by 2^n. Below -87 (-inf included) it gives exp(-87), about 1.6e-38, where exp
// gives less: next to exp(0) = 1 in a softmax sum that is nothing, and the clamp keeps n
// where 2^n is a normal float.
inline f32x16 exp_nonpositive(f32x16 x) {
  const f32x16 lowest = f32x16{} - 87.0f;
  x = x < lowest ? lowest : x;
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const f32x16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  f32x16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f32x16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f32x16 y = p * r * r + r + 1.0f;
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

float row_max(const float* x, int64_t V) {
  float mx = kNegInf;
  int64_t t = 0;
  if (V >= kLanes) {
    f32x16 m = load16(x);
    for (t = kLanes; t + kLanes <= V; t += kLanes) {
      const f32x16 v = load16(x + t);
      m = m < v ? v : m;
    }
    for (int j = 0; j < kLanes; ++j) mx = std::max(mx, m[j]);
  }
  for (; t < V; ++t) mx = std::max(mx, x[t]);
  return mx;
}

// log(sum exp(x - mx)). Each lane sums 16 terms in float, then joins a double sum: a float
// sum over a whole large vocabulary drifts by 1e-5.
float row_log_sum_exp(const float* x, int64_t V, float mx) {
  double sum = 0.0;
  int64_t t = 0;
  while (t + kLanes <= V) {
    f32x16 acc = {};
    for (int64_t end = std::min(V - kLanes, t + 15 * kLanes); t <= end; t += kLanes)
      acc += exp_nonpositive(load16(x + t) - mx);
    for (int j = 0; j < kLanes; ++j) sum += acc[j];
  }
  if (t < V) {
    float tail[kLanes];
    std::fill(tail, tail + kLanes, kNegInf);
    std::copy(x + t, x + V, tail);
    const f32x16 e = exp_nonpositive(load16(tail) - mx);
    for (int64_t j = 0; j < V - t; ++j) sum += e[j];
  }
  return static_cast<float>(std::log(sum));
}

void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_float(const at::Tensor& t, const char* name, int64_t dim) {
  check(t.scalar_type() == at::kFloat, std::string(name) + " must be float32");
  check(t.dim() == dim, std::string(name) + " must have " + std::to_string(dim) + " dimensions");
  check(t.device().is_cpu(), std::string(name) + " must be on the CPU");
}

}  // namespace

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

  auto context = at::zeros({R, M}, query.options());
  auto weights = at::zeros({R, S}, query.options());
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
      float* c = c_all + r * M;
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

std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits_in, const at::Tensor& scores_in,
                                                   const at::Tensor& rule_in, at::IntArrayRef banned,
                                                   int64_t eos, int64_t group, int64_t count) {
  check_float(logits_in, "logits", 2);
  check_float(scores_in, "row_scores", 1);
  check(rule_in.scalar_type() == at::kChar && rule_in.dim() == 1, "eos_rule must be a 1-d int8 tensor");
  const auto logits = logits_in.contiguous(), row_scores = scores_in.contiguous(), rule = rule_in.contiguous();
  const int64_t R = logits.size(0), V = logits.size(1);
  check(group >= 1 && R % group == 0, "rows must be a multiple of group");
  check(count >= 1, "count must be at least 1");
  check(row_scores.size(0) == R && rule.size(0) == R, "row_scores and eos_rule need one entry per row");
  check(eos >= 0 && eos < V, "eos must be a token id");
  std::vector<char> allowed(V, 1);
  for (int64_t b : banned) {
    check(b >= 0 && b < V, "banned token ids must be within the vocabulary");
    allowed[b] = 0;
  }
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
        // Most tokens cannot enter a full list: 16 of them are ruled out at once, by value,
        // before any is looked at one by one.
        int64_t t = 0;
        for (; t + kLanes <= V; t += kLanes) {
          const float worst = filled == count ? best[count - 1] : kNegInf;
          const f32x16 values = start + ((load16(x + t) - mx) - log_sum);
          const i32x16 maybe = values >= worst;
          int32_t any = 0;
          for (int j = 0; j < kLanes; ++j) any |= maybe[j];
          if (!any) continue;
          for (int64_t j = 0; j < kLanes; ++j) consider(t + j);
        }
        for (; t < V; ++t) consider(t);
      }
    }
  });
  return {out_scores, out_index};
}

// PyTorch warns that quantized tensors are deprecated; here they are only the packing
// format FBGEMM takes, so the warning would tell a user nothing they can act on.
struct IgnoreWarnings : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

c10::OperatorHandle quantized_op(const char* name) {
  try {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  } catch (const c10::Error&) {
    throw std::invalid_argument(std::string("compute_type int8 needs PyTorch's ") + name +
                                " (FBGEMM), which this torch build lacks; use compute_type float32");
  }
}

std::optional<c10::OperatorHandle> onednn_op(const char* name) {
  if (!at::hasMKLDNN()) return std::nullopt;
  return c10::Dispatcher::singleton().findOp(c10::OperatorName(name, ""));
}

at::Tensor pack_onednn(const at::Tensor& weight) {
  check_float(weight, "weight", 2);
  static const auto reorder = onednn_op("mkldnn::_reorder_linear_weight");
  static const bool usable = reorder && onednn_op("mkldnn::_linear_pointwise");
  if (!usable) return at::Tensor();
  torch::jit::Stack stack{weight.contiguous(), c10::IValue()};
  reorder->callBoxed(&stack);
  return stack[0].toTensor();
}

at::Tensor linear_onednn(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias) {
  static const auto linear = onednn_op("mkldnn::_linear_pointwise");
  torch::jit::Stack stack{x.contiguous(), packed, bias.defined() ? c10::IValue(bias) : c10::IValue(),
                          std::string("none"), c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  linear->callBoxed(&stack);
  return stack[0].toTensor();
}

c10::IValue pack_int8(const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_float(weight, "weight", 2);
  static const auto prepack = quantized_op("quantized::linear_prepack");
  IgnoreWarnings quiet;
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  const auto w = weight.contiguous();
  const auto scales = (w.abs().amax(1) / 127.0).clamp_min(1e-12).to(at::kDouble);
  const auto q = at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
  torch::jit::Stack stack{q, bias.has_value() ? c10::IValue(bias->contiguous()) : c10::IValue()};
  prepack.callBoxed(&stack);
  return stack[0];
}

at::Tensor linear_int8(const at::Tensor& x, const c10::IValue& packed) {
  static const auto dynamic = quantized_op("quantized::linear_dynamic");
  static const bool reduce_range = !at::cpu::is_avx512_vnni_supported();
  torch::jit::Stack stack{x.contiguous(), packed, reduce_range};
  dynamic.callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace seq2seq
