#include "attention.cuh"
#include "launch.h"

namespace seq2seq {
namespace cuda {
namespace {

constexpr int kThreads = 128;

// ptxas budget: 64 registers, no spills, no static shared memory (tests/test_cuda_build.py)
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const float* query, const float* keys, const float* memory, const int64_t* lengths,
                     const int64_t* sentence, const float* v, int64_t K, int64_t S, int64_t M, float* context,
                     float* weights) {
  simt::attention_body(simt::Device{}, query, keys, memory, lengths, sentence, v, K, S, M, context, weights);
}

// ptxas budget: 64 registers, no spills, no static shared memory (tests/test_cuda_build.py)
__global__ void __launch_bounds__(kThreads)
    multi_head_attention_kernel(const float* query, const float* keys, const float* values, const int64_t* lengths,
                                const int64_t* sentence, int64_t D, int64_t T, int64_t heads, float* context,
                                float* weights) {
  simt::multi_head_attention_body(simt::Device{}, query, keys, values, lengths, sentence, D, T, heads, context,
                                  weights);
}

}  // namespace

cudaError_t attention(const float* query, const float* keys, const float* memory, const int64_t* lengths,
                      const int64_t* sentence, const float* v, int64_t R, int64_t K, int64_t S, int64_t M,
                      float* context, float* weights, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  if (simt::attention_shared_bytes(kThreads, S) > kMaxSharedBytes) return cudaErrorInvalidConfiguration;
  attention_kernel<<<static_cast<unsigned>(R), kThreads, simt::attention_shared_bytes(kThreads, S), stream>>>(
      query, keys, memory, lengths, sentence, v, K, S, M, context, weights);
  return cudaGetLastError();
}

cudaError_t multi_head_attention(const float* query, const float* keys, const float* values, const int64_t* lengths,
                                 const int64_t* sentence, int64_t R, int64_t D, int64_t T, int64_t heads,
                                 float* context, float* weights, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  if (simt::multi_head_attention_shared_bytes(kThreads, T) > kMaxSharedBytes) return cudaErrorInvalidConfiguration;
  multi_head_attention_kernel<<<static_cast<unsigned>(R * heads), kThreads,
                                simt::multi_head_attention_shared_bytes(kThreads, T), stream>>>(
      query, keys, values, lengths, sentence, D, T, heads, context, weights);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace seq2seq
