// The engine's ops on CUDA devices: the inputs checked once (ops/checks.cpp), the outputs made
// with the inputs' options, and the kernels of ops/cuda/*.cu launched on the current stream.
// A shape a kernel does not take runs the op's ATen implementation (ops/reference.cpp).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "../../common.h"
#include "../checks.h"
#include "../ops.h"
#include "launch.h"

namespace seq2seq {
namespace cuda {
namespace {

// true: launched; false: the shape needs the ATen implementation. Other errors throw.
bool launched(cudaError_t error, const char* op) {
  if (error == cudaErrorInvalidConfiguration) return false;
  if (error != cudaSuccess) throw std::runtime_error(std::string(op) + ": " + cudaGetErrorString(error));
  return true;
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& query_in, const at::Tensor& keys_in,
                                                  const at::Tensor& memory_in, const at::Tensor& lengths_in,
                                                  const at::Tensor& sentence_in, const std::optional<at::Tensor>& v_in) {
  checks::attention(query_in, keys_in, memory_in, lengths_in, sentence_in, v_in);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), memory = memory_in.contiguous();
  const auto lengths = lengths_in.contiguous(), sentence = sentence_in.contiguous();
  const auto v = v_in.has_value() ? v_in->contiguous() : at::Tensor();
  const int64_t R = query.size(0), K = query.size(1), S = keys.size(1), M = memory.size(2);
  auto context = at::empty({R, M}, query.options()), weights = at::empty({R, S}, query.options());
  if (!launched(cuda::attention(query.data_ptr<float>(), keys.data_ptr<float>(), memory.data_ptr<float>(),
                                lengths.data_ptr<int64_t>(), sentence.data_ptr<int64_t>(),
                                v.defined() ? v.data_ptr<float>() : nullptr, R, K, S, M, context.data_ptr<float>(),
                                weights.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                "attention"))
    return reference::attention(query, keys, memory, lengths, sentence, v_in);
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> multi_head_attention_cuda(const at::Tensor& query_in, const at::Tensor& keys_in,
                                                             const at::Tensor& values_in, const at::Tensor& lengths_in,
                                                             const std::optional<at::Tensor>& sentence_in,
                                                             int64_t heads) {
  checks::multi_head_attention(query_in, keys_in, values_in, lengths_in, sentence_in, heads);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const auto query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const auto lengths = lengths_in.contiguous();
  const auto sentence = sentence_in.has_value() ? sentence_in->contiguous() : at::Tensor();
  const int64_t R = query.size(0), D = query.size(1), T = keys.size(1);
  auto context = at::empty({R, D}, query.options()), weights = at::empty({R, heads, T}, query.options());
  if (!launched(cuda::multi_head_attention(query.data_ptr<float>(), keys.data_ptr<float>(), values.data_ptr<float>(),
                                           lengths.data_ptr<int64_t>(),
                                           sentence.defined() ? sentence.data_ptr<int64_t>() : nullptr, R, D, T,
                                           heads, context.data_ptr<float>(), weights.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream()),
                "multi_head_attention"))
    return reference::multi_head_attention(query, keys, values, lengths, sentence_in, heads);
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> add_layer_norm_cuda(const at::Tensor& x_in,
                                                       const std::optional<at::Tensor>& residual_in,
                                                       const at::Tensor& weight_in, const at::Tensor& bias_in,
                                                       double eps) {
  checks::add_layer_norm(x_in, residual_in, weight_in, bias_in, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const auto residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  auto sum = residual.defined() ? at::empty_like(x) : x;  // without a residual the sum is x itself
  auto normed = at::empty_like(x);
  launched(cuda::add_layer_norm(x.data_ptr<float>(), residual.defined() ? residual.data_ptr<float>() : nullptr,
                                weight.data_ptr<float>(), bias.data_ptr<float>(), eps, rows, d, sum.data_ptr<float>(),
                                normed.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
           "add_layer_norm");
  return {sum, normed};
}

std::tuple<at::Tensor, at::Tensor> beam_candidates_cuda(const at::Tensor& logits_in, const at::Tensor& scores_in,
                                                        const at::Tensor& rule_in, at::IntArrayRef banned,
                                                        int64_t eos, int64_t group, int64_t count) {
  checks::beam_candidates(logits_in, scores_in, rule_in, banned, eos, group, count);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous(), row_scores = scores_in.contiguous(), rule = rule_in.contiguous();
  const int64_t R = logits.size(0), V = logits.size(1), blocks = R / group;
  const auto banned_ids = at::tensor(banned, at::kLong).to(logits.device(), /*non_blocking=*/true);
  auto scores = at::empty({blocks, count}, logits.options());
  auto index = at::empty({blocks, count}, logits.options().dtype(at::kLong));
  if (!launched(cuda::beam_candidates(logits.data_ptr<float>(), row_scores.data_ptr<float>(),
                                      rule.data_ptr<int8_t>(), banned_ids.data_ptr<int64_t>(),
                                      static_cast<int64_t>(banned.size()), R, V, eos, group, count,
                                      scores.data_ptr<float>(), index.data_ptr<int64_t>(),
                                      c10::cuda::getCurrentCUDAStream()),
                "beam_candidates"))
    return reference::beam_candidates(logits, row_scores, rule, banned, eos, group, count);
  return {scores, index};
}

}  // namespace
}  // namespace cuda
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CUDA, m) {
  m.impl("attention", &seq2seq::cuda::attention_cuda);
  m.impl("multi_head_attention", &seq2seq::cuda::multi_head_attention_cuda);
  m.impl("add_layer_norm", &seq2seq::cuda::add_layer_norm_cuda);
  m.impl("beam_candidates", &seq2seq::cuda::beam_candidates_cuda);
}
