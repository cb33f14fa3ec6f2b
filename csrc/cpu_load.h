// How many intra-op threads a decoding call on the CPU takes. Threads that split a product
// wait for each other at its end, so a core taken by another process stalls every product:
// on a 2-core AMD EPYC with one core kept busy, the engine at 2 threads decoded greedy int8
// at 0.43x and beam 5 at 0.31x of CTranslate2 at one thread, which holds its speed there.
// The engine therefore takes the threads it was given only while their cores are free, one
// fewer for each core other processes keep busy (docs/engine.md, `seq2seq bench --busy-cores`).
#pragma once

#include <cstdint>

namespace seq2seq {

// The threads for a call: `configured`, less one for each of the `cores` that others keep
// busy (a core counts once they use 30% of it), at least 1.
int64_t threads_for_load(int64_t configured, int64_t cores, double others_busy);

// The cores this process may run on, and how many of them processes other than this one kept
// busy over the last window (from /proc/stat and /proc/self/stat, resampled at most every
// 200 ms; 0 where /proc cannot be read).
struct CpuLoad {
  int64_t cores = 1;
  double others_busy = 0.0;
};
CpuLoad cpu_load_now();

// For one decoding call on this thread: the intra-op threads set now (torch.set_num_threads,
// Engine's `threads`) less threads_for_load's share of the cores others keep busy, and the
// count as it was once the call ends. SEQ2SEQ_THREADS_FOLLOW_LOAD=0 leaves the count alone.
class LoadThreads {
 public:
  LoadThreads();
  ~LoadThreads();
  LoadThreads(const LoadThreads&) = delete;
  LoadThreads& operator=(const LoadThreads&) = delete;

 private:
  int64_t before_ = 0, during_ = 0;
};

}  // namespace seq2seq
