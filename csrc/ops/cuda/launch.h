// The CUDA kernels' launchers (ops/cuda/*.cu): raw pointers and a stream, no torch header, so
// that nvcc compiles them in seconds. ops/cuda/register.cpp checks the inputs (ops/checks.cpp),
// makes the outputs and calls these. Each returns the launch's error (cudaSuccess when none),
// or cudaErrorInvalidConfiguration, launching nothing, for a shape whose block would need
// more than kMaxSharedBytes of shared memory (the op then runs its ATen implementation).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace seq2seq {
namespace cuda {

// What every CUDA GPU gives a block without opting in per kernel.
constexpr size_t kMaxSharedBytes = 48 * 1024;

cudaError_t add_layer_norm(const float* x, const float* residual, const float* weight, const float* bias, double eps,
                           int64_t rows, int64_t d, float* sum, float* normed, cudaStream_t stream);

cudaError_t attention(const float* query, const float* keys, const float* memory, const int64_t* lengths,
                      const int64_t* sentence, const float* v, int64_t R, int64_t K, int64_t S, int64_t M,
                      float* context, float* weights, cudaStream_t stream);

cudaError_t multi_head_attention(const float* query, const float* keys, const float* values, const int64_t* lengths,
                                 const int64_t* sentence, int64_t R, int64_t D, int64_t T, int64_t heads,
                                 float* context, float* weights, cudaStream_t stream);

cudaError_t beam_candidates(const float* logits, const float* row_scores, const int8_t* eos_rule,
                            const int64_t* banned, int64_t banned_count, int64_t rows, int64_t V, int64_t eos,
                            int64_t group, int64_t count, float* scores, int64_t* index, cudaStream_t stream);

}  // namespace cuda
}  // namespace seq2seq
