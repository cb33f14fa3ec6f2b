// simt.h's context on the host: each block's threads as std::threads, __syncthreads as a
// barrier, warp shuffles through per-warp exchange slots. For tests on machines without a
// GPU: slow, and meant to be (every CUDA thread is an OS thread), but it runs the bodies that
// nvcc compiles for the GPU, so races, missing barriers and out-of-bounds reads show up under
// ThreadSanitizer and AddressSanitizer.
#pragma once

#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "simt.h"

namespace seq2seq {
namespace simt {

// A reusable barrier for a fixed number of threads (std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      all_.notify_all();
      return;
    }
    all_.wait(lock, [&] { return generation != generation_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_;
  int count_, arrived_ = 0;
  unsigned generation_ = 0;
};

struct HostBlock {
  HostBlock(int threads, size_t shared_bytes)
      : barrier(threads), slots(threads), shared_size(shared_bytes),
        shared(new (std::align_val_t(16)) unsigned char[shared_bytes ? shared_bytes : 1]) {
    for (int w = 0; w < threads / kWarp; ++w) warps.push_back(std::make_unique<Barrier>(kWarp));
    // Unwritten shared memory is garbage on a GPU: here all bits set, a NaN as float.
    std::memset(shared.get(), 0xff, shared_bytes ? shared_bytes : 1);
  }
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(16)); }
  };
  Barrier barrier;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> slots;  // a shuffled value per thread
  size_t shared_size;
  std::unique_ptr<unsigned char[], Free> shared;
};

inline void Host::sync() const { block_state_->barrier.wait(); }

template <typename T>
T Host::shuffle_xor(T value, int lane_mask) const {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes");
  auto& b = *block_state_;
  Barrier& warp = *b.warps[thread_ / kWarp];
  std::memcpy(&b.slots[thread_], &value, sizeof(T));
  warp.wait();
  T other;
  std::memcpy(&other, &b.slots[thread_ ^ lane_mask], sizeof(T));
  warp.wait();  // no lane writes its slot again before every lane has read
  return other;
}

inline float Host::atomic_add(float* address, float value) const {
  static_assert(sizeof(float) == sizeof(uint32_t), "float is 32 bits");
  uint32_t* bits = reinterpret_cast<uint32_t*>(address);
  uint32_t seen = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    float old;
    std::memcpy(&old, &seen, sizeof old);
    const float sum = old + value;
    uint32_t next;
    std::memcpy(&next, &sum, sizeof next);
    if (__atomic_compare_exchange_n(bits, &seen, next, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return old;
  }
}

inline int Host::atomic_add(int* address, int value) const {
  return __atomic_fetch_add(address, value, __ATOMIC_ACQ_REL);
}

template <typename T>
T* Host::shared() const {
  return reinterpret_cast<T*>(block_state_->shared.get());
}

// Runs body(const Host&) as a grid of `blocks` blocks of `threads` threads, a block at a time.
inline void run_on_host(int blocks, int threads, size_t shared_bytes, const std::function<void(const Host&)>& body) {
  if (threads < kWarp || threads > 1024 || threads % kWarp != 0)
    throw std::invalid_argument("a block has a multiple of 32 threads, at most 1024, not " + std::to_string(threads));
  for (int b = 0; b < blocks; ++b) {
    HostBlock state(threads, shared_bytes);
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(threads);
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        try {
          body(Host{t, threads, b, blocks, &state});
        } catch (...) {
          errors[t] = std::current_exception();
        }
      });
    for (auto& thread : pool) thread.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }
}

}  // namespace simt
}  // namespace seq2seq
