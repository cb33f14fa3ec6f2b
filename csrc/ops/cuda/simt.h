// What a kernel body needs from the hardware, and no more: its thread and block, the block
// barrier, warp shuffles, atomics and dynamic shared memory. Under nvcc these are CUDA's
// intrinsics; on the host (tests, and any build without nvcc) a block is a group of
// std::threads, one per CUDA thread, and the barrier one that all of them reach, so that the
// same body runs on a CPU machine under ThreadSanitizer and AddressSanitizer.
//
// A body is a function template over the context type:
//   template <class Simt> SIMT_FN void body(const Simt& simt, ...args) { ... simt.sync(); ... }
// Rules the bodies keep (CUDA's own; the host runner enforces the first two):
//   - blocks have a multiple of 32 threads, at most 1024; shuffles are called by a whole warp;
//   - sync() is reached by every thread of the block, the same number of times;
//   - shared memory is what the launch asked for, read only after a sync() that follows its write.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SIMT_FN __device__ __forceinline__
#else
#define SIMT_FN inline
#endif

namespace seq2seq {
namespace simt {

constexpr int kWarp = 32;

#if defined(__CUDACC__)

struct Device {
  SIMT_FN int thread() const { return static_cast<int>(threadIdx.x); }
  SIMT_FN int threads() const { return static_cast<int>(blockDim.x); }
  SIMT_FN int block() const { return static_cast<int>(blockIdx.x); }
  SIMT_FN int blocks() const { return static_cast<int>(gridDim.x); }
  SIMT_FN void sync() const { __syncthreads(); }
  template <typename T>
  SIMT_FN T shuffle_xor(T value, int lane_mask) const {
    return __shfl_xor_sync(0xffffffffu, value, lane_mask);
  }
  SIMT_FN float atomic_add(float* address, float value) const { return atomicAdd(address, value); }
  SIMT_FN int atomic_add(int* address, int value) const { return atomicAdd(address, value); }
  template <typename T>
  SIMT_FN T* shared() const {
    extern __shared__ __align__(16) unsigned char shared_memory[];
    return reinterpret_cast<T*>(shared_memory);
  }
};

#else  // the host

struct HostBlock;  // simt_host.h: the barrier, the warps' exchange slots and the shared memory

struct Host {
  int thread_, threads_, block_, blocks_;
  HostBlock* block_state_;

  int thread() const { return thread_; }
  int threads() const { return threads_; }
  int block() const { return block_; }
  int blocks() const { return blocks_; }
  void sync() const;
  template <typename T>
  T shuffle_xor(T value, int lane_mask) const;
  float atomic_add(float* address, float value) const;
  int atomic_add(int* address, int value) const;
  template <typename T>
  T* shared() const;
};

#endif

struct Sum {
  template <typename T>
  SIMT_FN T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  SIMT_FN T operator()(T a, T b) const { return b > a ? b : a; }
};

// op over one value per thread of a warp, every lane getting the result.
template <class Simt, typename T, class Op>
SIMT_FN T warp_reduce(const Simt& simt, T value, Op op) {
  for (int mask = kWarp / 2; mask > 0; mask /= 2) value = op(value, simt.shuffle_xor(value, mask));
  return value;
}

// op over one value per thread of the block, every thread getting the result. `scratch`
// holds a T per warp in shared memory; the call syncs twice, so it may be called again at once.
template <class Simt, typename T, class Op>
SIMT_FN T block_reduce(const Simt& simt, T value, T* scratch, Op op) {
  value = warp_reduce(simt, value, op);
  const int warp = simt.thread() / kWarp, warps = simt.threads() / kWarp;
  if (simt.thread() % kWarp == 0) scratch[warp] = value;
  simt.sync();
  T total = scratch[0];
  for (int w = 1; w < warps; ++w) total = op(total, scratch[w]);  // in warp order: every thread the same
  simt.sync();
  return total;
}

template <class Simt, typename T>
SIMT_FN T block_sum(const Simt& simt, T value, T* scratch) {
  return block_reduce(simt, value, scratch, Sum{});
}

template <class Simt, typename T>
SIMT_FN T block_max(const Simt& simt, T value, T* scratch) {
  return block_reduce(simt, value, scratch, Max{});
}

}  // namespace simt
}  // namespace seq2seq
