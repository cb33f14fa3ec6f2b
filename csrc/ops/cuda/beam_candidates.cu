#include "beam_candidates.cuh"
#include "launch.h"

namespace seq2seq {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// ptxas budget: 64 registers, no spills, no static shared memory (tests/test_cuda_build.py)
__global__ void __launch_bounds__(kThreads, 1)
    beam_candidates_kernel(const float* logits, const float* row_scores, const int8_t* eos_rule,
                           const int64_t* banned, int64_t banned_count, int64_t V, int64_t eos, int64_t group,
                           int64_t count, float* scores, int64_t* index) {
  simt::beam_candidates_body(simt::Device{}, logits, row_scores, eos_rule, banned, banned_count, V, eos, group, count,
                             scores, index);
}

}  // namespace

cudaError_t beam_candidates(const float* logits, const float* row_scores, const int8_t* eos_rule,
                            const int64_t* banned, int64_t banned_count, int64_t rows, int64_t V, int64_t eos,
                            int64_t group, int64_t count, float* scores, int64_t* index, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (simt::beam_candidates_shared_bytes(kThreads, group) > kMaxSharedBytes) return cudaErrorInvalidConfiguration;
  beam_candidates_kernel<<<static_cast<unsigned>(rows / group), kThreads,
                           simt::beam_candidates_shared_bytes(kThreads, group), stream>>>(
      logits, row_scores, eos_rule, banned, banned_count, V, eos, group, count, scores, index);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace seq2seq
