#include "batcher.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <stdexcept>

namespace seq2seq {

bool same_options(const DecodeOptions& a, const DecodeOptions& b) {
  return a.beam_size == b.beam_size && a.n_best == b.n_best && a.length_penalty == b.length_penalty &&
         a.alpha == b.alpha && a.min_length == b.min_length && a.min_length_ratio == b.min_length_ratio &&
         a.max_length == b.max_length && a.max_length_ratio == b.max_length_ratio &&
         a.max_length_extra == b.max_length_extra && a.early_stop == b.early_stop &&
         a.return_attention == b.return_attention && a.no_repeat_ngram_size == b.no_repeat_ngram_size;
}

int64_t Job::cost() const {
  int64_t tokens = 0;
  for (const auto& s : ids) tokens += static_cast<int64_t>(s.size()) + 1;
  return tokens * opts.beam_size;
}

Batcher::Batcher(Run run, int64_t max_batch, int64_t max_tokens, double max_delay_s, int64_t max_queue, int workers,
                 int64_t max_per_client)
    : run_(std::move(run)), max_batch_(max_batch), max_tokens_(max_tokens), max_queue_(max_queue),
      max_per_client_(max_per_client > 0 ? max_per_client : max_queue),
      max_delay_(max_delay_s), workers_(workers) {
  if (max_batch < 1 || max_tokens < 1 || max_delay_s < 0 || max_queue < 1 || workers < 1)
    throw std::invalid_argument("max_batch, max_tokens, max_queue and workers must be positive, max_delay >= 0");
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
}

Batcher::~Batcher() { close(); }

bool Batcher::submit(std::vector<std::vector<int64_t>> ids, const DecodeOptions& opts,
                     std::optional<Clock::time_point> deadline, std::shared_ptr<std::atomic<bool>> cancelled,
                     const std::function<std::function<void(Outcome)>(size_t, size_t)>& done_for,
                     const std::string& client, std::string* why, bool background) {
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<Job> jobs;
  for (int64_t first = 0; first < n; first += max_batch_) {
    const int64_t count = std::min(max_batch_, n - first);
    Job job;
    job.ids.assign(std::make_move_iterator(ids.begin() + first), std::make_move_iterator(ids.begin() + first + count));
    job.opts = opts;
    job.deadline = deadline;
    job.cancelled = cancelled;
    job.done = done_for(first, count);
    job.client = client;
    job.background = background;
    jobs.push_back(std::move(job));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    *why = "the server is shutting down";
    return false;
  }
  if (queued_ + n > max_queue_) {
    *why = "the queue holds " + std::to_string(queued_) + " sentences; " + std::to_string(n) +
           " more would pass its limit of " + std::to_string(max_queue_);
    return false;
  }
  int64_t& held = by_client_[client];
  if (held + n > max_per_client_) {
    *why = "this client has " + std::to_string(held) + " sentences queued; " + std::to_string(n) +
           " more would pass the " + std::to_string(max_per_client_) + " one client may hold of the queue's " +
           std::to_string(max_queue_);
    if (held == 0) by_client_.erase(client);
    return false;
  }
  held += n;
  for (auto& job : jobs) queue_.push_back(std::move(job));
  queued_ += n;
  submitted_ += n;
  cond_.notify_all();
  return true;
}

void Batcher::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cond_.notify_all();
  }
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

int64_t Batcher::queued() {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

int64_t Batcher::running() {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

BatcherStats Batcher::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Whether two jobs may share a batch: one search's options, one priority.
static bool alike(const Job& a, const Job& b) { return a.background == b.background && same_options(a.opts, b.opts); }

std::deque<Job>::iterator Batcher::first() {
  const auto interactive = std::find_if(queue_.begin(), queue_.end(), [](const Job& j) { return !j.background; });
  if (interactive != queue_.end() || queue_.empty()) return interactive;
  return closed_ || running_background_ < std::max(1, workers_ - 1) ? queue_.begin() : queue_.end();
}

int64_t Batcher::ready(const Job& first) const {
  int64_t n = 0;
  for (const auto& job : queue_)
    if (alike(job, first)) n += static_cast<int64_t>(job.ids.size());
  return n;
}

int64_t Batcher::fair_share(int64_t ready) const {
  if (running_ == 0) return max_batch_;
  const int64_t all = ready + running_sentences_;
  return std::max<int64_t>(1, std::min<int64_t>(max_batch_, (all + workers_ - 1) / workers_));
}

Batcher::Taken Batcher::take(int64_t answered, uint64_t mark, double last_run) {
  std::unique_lock<std::mutex> lock(mu_);
  // Background batches take at most all workers but one: an interactive call always finds a
  // worker free of them.
  cond_.wait(lock, [&] { return (!forming_ && first() != queue_.end()) || (closed_ && queue_.empty()); });
  if (queue_.empty()) return {{}, true};
  forming_ = true;
  Job model;  // what the batch's jobs must be like (the first may leave the queue meanwhile)
  {
    const auto it = first();
    model.opts = it->opts;
    model.background = it->background;
    model.arrived = it->arrived;
  }
  auto until = model.arrived + std::chrono::duration_cast<Clock::duration>(max_delay_);
  if (answered) {
    const auto wait = std::max(max_delay_, std::chrono::duration<double>(last_run / 10));
    until = std::max(until, Clock::now() + std::chrono::duration_cast<Clock::duration>(wait));
  }
  int64_t limit = 0;
  for (;;) {
    const int64_t returning = std::max<int64_t>(0, answered - static_cast<int64_t>(submitted_ - mark));
    const int64_t have = ready(model);
    limit = fair_share(have + returning);
    if (closed_ || have >= limit || Clock::now() >= until || running_ == 0) break;
    cond_.wait_until(lock, until);
  }
  Taken taken;
  int64_t sentences = 0, cost = 0;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!alike(*it, model)) {
      ++it;
      continue;
    }
    const int64_t n = static_cast<int64_t>(it->ids.size());
    if (!taken.jobs.empty() && (sentences + n > limit || cost + it->cost() > max_tokens_)) break;
    sentences += n;
    cost += it->cost();
    queued_ -= n;
    if ((by_client_[it->client] -= n) == 0) by_client_.erase(it->client);
    taken.jobs.push_back(std::move(*it));
    it = queue_.erase(it);
  }
  running_sentences_ += sentences;
  ++running_;
  running_background_ += model.background;
  forming_ = false;
  cond_.notify_all();
  return taken;
}

// Nobody waits for the job's answer any more.
static bool gone(const Job& job) {
  return (job.cancelled && job.cancelled->load()) || (job.deadline && Clock::now() > *job.deadline);
}

void Batcher::work() {
  at::init_num_threads();  // this thread's OpenMP team follows the engine's thread setting
  int64_t answered = 0;
  uint64_t mark = 0;
  double last_run = 0;
  for (;;) {
    Taken taken = take(answered, mark, last_run);
    if (taken.closed) return;
    const auto now = Clock::now();
    std::vector<Job*> live;
    int64_t taken_sentences = 0, live_sentences = 0;
    for (auto& job : taken.jobs) {
      taken_sentences += static_cast<int64_t>(job.ids.size());
      if (job.cancelled && job.cancelled->load()) {
        job.done({Outcome::kCancelled, {}, ""});
      } else if (job.deadline && now > *job.deadline) {
        job.done({Outcome::kDeadline, {}, ""});
      } else {
        live.push_back(&job);
        live_sentences += static_cast<int64_t>(job.ids.size());
      }
    }
    Outcome outcome;
    std::vector<const Job*> owner;  // each sentence's job
    if (!live.empty()) {
      std::vector<std::vector<int64_t>> sources;
      for (Job* job : live) {
        sources.insert(sources.end(), job->ids.begin(), job->ids.end());
        owner.insert(owner.end(), job->ids.size(), job);
      }
      const Abandoned abandoned = [&owner](int64_t sentence) { return gone(*owner[sentence]); };
      const auto began = Clock::now();
      try {
        outcome.hypotheses = run_(sources, live.front()->opts, abandoned);
      } catch (const std::invalid_argument& e) {  // every caller of the batch learns what went wrong
        outcome = {Outcome::kInvalid, {}, e.what()};
      } catch (const std::exception& e) {
        outcome = {Outcome::kError, {}, e.what()};
      }
      last_run = std::chrono::duration<double>(Clock::now() - began).count();
    }
    {
      // No longer running before any caller hears back: a lone caller's next request must
      // not find this batch still counted and wait for company.
      std::lock_guard<std::mutex> lock(mu_);
      --running_;
      running_background_ -= !taken.jobs.empty() && taken.jobs.front().background;
      running_sentences_ -= taken_sentences;
      answered = live_sentences;
      mark = submitted_;
      if (!live.empty()) {
        ++stats_.batches;
        stats_.sentences += live_sentences;
      }
      cond_.notify_all();
    }
    size_t start = 0;
    for (Job* job : live) {
      if (outcome.kind == Outcome::kInvalid || outcome.kind == Outcome::kError) {
        job->done({outcome.kind, {}, outcome.error});
        continue;
      }
      auto first = outcome.hypotheses.begin() + start;
      const auto left = std::count_if(first, first + job->ids.size(), [](const auto& h) { return h.empty(); });
      if (left) {  // the search let go of the job's sentences: its caller has gone
        start += job->ids.size();
        {
          std::lock_guard<std::mutex> lock(mu_);
          stats_.abandoned += left;
        }
        const bool cancelled = job->cancelled && job->cancelled->load();
        job->done({cancelled ? Outcome::kCancelled : Outcome::kDeadline, {}, ""});
        continue;
      }
      Outcome mine;
      mine.hypotheses.assign(std::make_move_iterator(first), std::make_move_iterator(first + job->ids.size()));
      start += job->ids.size();
      job->done(std::move(mine));
    }
  }
}

}  // namespace seq2seq
