// Dynamic batching for both servers (seq2seq-serve, and seq2seq serve through seq2seq._C):
// sentences of concurrent requests merged into engine batches. A request's sentences become jobs
// of at most max_batch. One worker gathers at a time; the oldest interactive job (else the oldest
// background one) and those with the same decoding options and priority go together, up to
// max_batch sentences and max_tokens (source tokens + 1) x beam. While another batch runs, a
// worker waits up to max_delay from the oldest job's arrival, and for the callers it has just
// answered (up to a tenth of its last batch's time), for a fair share of queued + running +
// returning sentences; a lone caller never waits. Background batches take at most all workers
// but one. Jobs past their deadline or cancelled are dropped before they cost compute, and their
// sentences leave a running batch at its next step. Batches are formed only when a worker is
// free, so under load the queue grows and batches fill up.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "decoding.h"

namespace seq2seq {

using Clock = std::chrono::steady_clock;

struct Outcome {
  enum Kind { kDone, kDeadline, kCancelled, kInvalid, kError } kind = kDone;
  std::vector<std::vector<Hypothesis>> hypotheses;  // with kDone: one list per sentence
  std::string error;                               // with kInvalid (bad input: the engine threw
                                                   // std::invalid_argument) and kError
};

struct Job {
  std::vector<std::vector<int64_t>> ids;
  DecodeOptions opts;
  std::optional<Clock::time_point> deadline;
  std::shared_ptr<std::atomic<bool>> cancelled;  // set by the caller; may be shared by a request's jobs
  std::function<void(Outcome)> done;             // called once, from a worker thread
  std::string client;                            // whose: the connection's peer address
  bool background = false;                       // runs when no interactive job waits (a costly request)
  Clock::time_point arrived = Clock::now();
  int64_t cost() const;  // (source tokens + <eos>) x beam
};

struct BatcherStats {
  uint64_t batches = 0, sentences = 0;
  uint64_t abandoned = 0;  // sentences the search left mid-way: their callers had gone
};

class Batcher {
 public:
  // Engine::translate: a sentence whose caller has cancelled or whose deadline has passed is
  // reported abandoned to the search, which stops decoding it at its next step.
  using Run = std::function<std::vector<std::vector<Hypothesis>>(const std::vector<std::vector<int64_t>>&,
                                                                 const DecodeOptions&, const Abandoned&)>;
  // max_per_client: the sentences one client may have queued (0: max_queue), so that one
  // client sending as fast as it can still leaves room for the others.
  Batcher(Run run, int64_t max_batch, int64_t max_tokens, double max_delay_s, int64_t max_queue, int workers,
          int64_t max_per_client = 0);
  ~Batcher();

  // Splits the sentences into jobs of at most max_batch and queues them; false (and nothing
  // queued) when they would overflow the queue or the client's share of it, or the batcher is
  // closed, with the reason.
  bool submit(std::vector<std::vector<int64_t>> ids, const DecodeOptions& opts,
              std::optional<Clock::time_point> deadline, std::shared_ptr<std::atomic<bool>> cancelled,
              const std::function<std::function<void(Outcome)>(size_t first, size_t count)>& done_for,
              const std::string& client, std::string* why, bool background = false);
  // Finishes what is queued, then stops the workers.
  void close();
  int64_t max_batch() const { return max_batch_; }
  int64_t queued();
  int64_t running();  // batches taken by workers and not yet answered
  BatcherStats stats();

 private:
  struct Taken {
    std::vector<Job> jobs;
    bool closed = false;
  };
  Taken take(int64_t answered, uint64_t mark, double last_run);
  // The job the next batch forms around: the oldest interactive one, else the oldest background
  // one while background batches hold fewer than all workers but one; queue_.end() when none.
  std::deque<Job>::iterator first();
  int64_t ready(const Job& first) const;
  int64_t fair_share(int64_t ready) const;
  void work();

  Run run_;
  const int64_t max_batch_, max_tokens_, max_queue_, max_per_client_;
  const std::chrono::duration<double> max_delay_;
  std::mutex mu_;
  std::condition_variable cond_;
  std::deque<Job> queue_;
  int64_t queued_ = 0;       // sentences waiting
  std::map<std::string, int64_t> by_client_;  // sentences waiting, per client
  uint64_t submitted_ = 0;   // sentences ever queued
  bool closed_ = false, forming_ = false;
  int64_t running_ = 0, running_sentences_ = 0, running_background_ = 0;
  BatcherStats stats_;
  const int workers_;
  std::vector<std::thread> threads_;
};

bool same_options(const DecodeOptions& a, const DecodeOptions& b);

}  // namespace seq2seq
