// seq2seq._C.Batcher: the batcher of seq2seq-serve (batcher.h) for the Python server. Its workers
// run the C++ engine without the GIL; a Python callable (a scripted model in the tests, or the
// Python reference) runs with it. Waiting for an answer releases the GIL.
#include <torch/extension.h>

#include <condition_variable>
#include <mutex>

#include "batcher.h"
#include "engine.h"

namespace py = pybind11;

namespace seq2seq {
namespace {

struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DeadlineExpired : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct AbandonedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct WaitTimedOut : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The batches run since the last flush, for the on_batch callback. The workers only append:
// taking the GIL from a worker could wait out the interpreter's switch interval per batch.
// A caller whose job is answered passes them on, holding the GIL anyway.
struct BatchLog {
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> pending;  // (sentences, queued) per batch
  PyObject* record = nullptr;  // borrowed from PyBatcher::on_batch_; null once it is gone

  void add(int64_t sentences, int64_t queued) {
    std::lock_guard<std::mutex> lock(mu);
    if (record) pending.emplace_back(sentences, queued);
  }
  // With the GIL held. No thread holding mu waits for the GIL, so taking mu here is safe.
  void flush() {
    std::vector<std::pair<int64_t, int64_t>> taken;
    PyObject* fn;
    {
      std::lock_guard<std::mutex> lock(mu);
      taken.swap(pending);
      fn = record;
    }
    if (!fn) return;
    for (const auto& [sentences, queued] : taken) {
      try {
        py::handle callback(fn);
        callback(sentences, queued);
      } catch (py::error_already_set& e) {  // a metric's failure must not cost the caller its answer
        e.discard_as_unraisable("seq2seq._C.Batcher on_batch");
      }
    }
  }
};

// One job's answer, filled by a worker thread (or by abandon) and read by its caller.
class PendingJob {
 public:
  PendingJob(std::shared_ptr<std::atomic<bool>> cancelled, std::shared_ptr<BatchLog> log)
      : log(std::move(log)), cancelled_(std::move(cancelled)) {}

  const std::shared_ptr<BatchLog> log;

  void finish(Outcome outcome) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // abandoned first: the caller has already been told
    outcome_ = std::move(outcome);
    finished_ = true;
    cv_.notify_all();
  }

  // Nobody waits for the answer any more (the caller cancelled, its deadline passed): dropped
  // if still queued, else its sentences stop at the search's next step. The whole request's
  // jobs share the flag.
  void abandon() {
    cancelled_->store(true);
    finish({Outcome::kCancelled, {}, ""});
  }

  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_;
  }

  // Waits (GIL released by the binding) at most timeout seconds; negative: for ever.
  Results result(double timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto ready = [this] { return finished_; };
    if (timeout < 0) {
      cv_.wait(lock, ready);
    } else if (!cv_.wait_for(lock, std::chrono::duration<double>(timeout), ready)) {
      throw WaitTimedOut("the job was not answered within " + std::to_string(timeout) + " s");
    }
    switch (outcome_.kind) {
      case Outcome::kDone: return outcome_.hypotheses;
      case Outcome::kDeadline: throw DeadlineExpired("the deadline passed before the sentences were decoded");
      case Outcome::kCancelled: throw AbandonedError("the caller went away before the sentences were decoded");
      case Outcome::kInvalid: throw std::invalid_argument(outcome_.error);
      case Outcome::kError: break;
    }
    throw std::runtime_error("the engine failed: " + outcome_.error);
  }

 private:
  std::shared_ptr<std::atomic<bool>> cancelled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool finished_ = false;
  Outcome outcome_;
};

// A Python run's answer: a list per sentence of objects with tokens, score, log_prob and
// attention (seq2seq.decoding.Hypothesis, or the engine's own).
Results results_from_python(const py::handle& answer) {
  Results out;
  for (const auto& sentence : answer) {
    out.emplace_back();
    for (const auto& h : sentence) {
      Hypothesis hyp;
      hyp.tokens = h.attr("tokens").cast<std::vector<int64_t>>();
      hyp.score = h.attr("score").cast<double>();
      hyp.log_prob = h.attr("log_prob").cast<double>();
      const py::object attention = h.attr("attention");
      if (!attention.is_none()) hyp.attention = attention.cast<at::Tensor>();
      out.back().push_back(std::move(hyp));
    }
  }
  return out;
}

class PyBatcher {
 public:
  PyBatcher(py::object run, int64_t max_batch, int64_t max_tokens, double max_delay, int64_t max_queue, int workers,
            py::object on_batch, std::optional<int64_t> max_per_client)
      : run_(std::move(run)), on_batch_(std::move(on_batch)) {
    if (max_per_client && *max_per_client < 1)
      throw std::invalid_argument("max_queue_per_client must be positive, got " + std::to_string(*max_per_client));
    Batcher::Run body;
    if (py::isinstance<Engine>(run_)) {
      const Engine* engine = run_.cast<const Engine*>();
      body = [engine](const std::vector<std::vector<int64_t>>& s, const DecodeOptions& o, const Abandoned& a) {
        return engine->translate(s, o, a);
      };
    } else if (PyCallable_Check(run_.ptr())) {
      // Borrowed: run_ keeps it alive, and the workers end before run_ is released.
      const py::handle fn = run_;
      body = [fn](const std::vector<std::vector<int64_t>>& s, const DecodeOptions& o, const Abandoned& a) {
        py::gil_scoped_acquire gil;
        try {
          // abandoned(i): whether sentence i's caller has gone, valid during the call only.
          const py::cpp_function abandoned([&a](int64_t i) { return a(i); });
          return results_from_python(fn(s, o, abandoned));
        } catch (py::error_already_set& e) {
          if (e.matches(PyExc_ValueError)) throw std::invalid_argument(py::str(e.value()).cast<std::string>());
          throw std::runtime_error(e.what());
        }
      };
    } else {
      throw std::invalid_argument("Batcher: run must be a seq2seq._C.Engine or a callable (ids, options, abandoned)");
    }
    if (!on_batch_.is_none()) {
      log_->record = on_batch_.ptr();
      body = [body = std::move(body), this](const std::vector<std::vector<int64_t>>& s, const DecodeOptions& o,
                                            const Abandoned& a) {
        log_->add(static_cast<int64_t>(s.size()), batcher_->queued());
        return body(s, o, a);
      };
    }
    batcher_ = std::make_unique<Batcher>(std::move(body), max_batch, max_tokens, max_delay, max_queue, workers,
                                         max_per_client.value_or(0));
  }

  ~PyBatcher() {
    {
      // The workers may be waiting for the GIL in a Python run: let them finish first.
      py::gil_scoped_release release;
      batcher_.reset();
    }
    std::lock_guard<std::mutex> lock(log_->mu);  // jobs may outlive the batcher, not on_batch_
    log_->record = nullptr;
  }

  std::vector<std::shared_ptr<PendingJob>> submit(std::vector<std::vector<int64_t>> ids, const DecodeOptions& opts,
                                                  std::optional<double> timeout, const std::string& client,
                                                  bool background) {
    std::optional<Clock::time_point> deadline;
    if (timeout) deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(std::max(0.0, *timeout)));
    auto cancelled = std::make_shared<std::atomic<bool>>(false);
    std::vector<std::shared_ptr<PendingJob>> jobs;
    const auto done_for = [&](size_t, size_t) {
      jobs.push_back(std::make_shared<PendingJob>(cancelled, log_));
      return [job = jobs.back()](Outcome outcome) { job->finish(std::move(outcome)); };
    };
    std::string why;
    if (!batcher_->submit(std::move(ids), opts, deadline, cancelled, done_for, client, &why, background))
      throw QueueFull(why);
    return jobs;
  }

  void close() { batcher_->close(); }
  Batcher& batcher() { return *batcher_; }

 private:
  py::object run_, on_batch_;
  std::shared_ptr<BatchLog> log_ = std::make_shared<BatchLog>();
  std::unique_ptr<Batcher> batcher_;
};

}  // namespace

void bind_batcher(py::module& m) {
  py::register_exception<QueueFull>(m, "QueueFull");
  py::register_exception<DeadlineExpired>(m, "DeadlineExpired", PyExc_TimeoutError);
  py::register_exception<AbandonedError>(m, "Abandoned");
  py::register_exception<WaitTimedOut>(m, "WaitTimedOut", PyExc_TimeoutError);

  py::class_<PendingJob, std::shared_ptr<PendingJob>>(m, "BatchJob")
      .def("result",
           [](PendingJob& j, std::optional<double> timeout) {
             Results out;
             std::exception_ptr error;
             {
               py::gil_scoped_release release;
               try {
                 out = j.result(timeout.value_or(-1));
               } catch (...) {
                 error = std::current_exception();
               }
             }
             j.log->flush();  // the batches run meanwhile, to on_batch
             if (error) std::rethrow_exception(error);
             return out;
           },
           py::arg("timeout") = std::nullopt,
           "The sentences' hypotheses. Raises WaitTimedOut (a TimeoutError) after timeout seconds, "
           "DeadlineExpired when the request's deadline passed first, Abandoned when its caller went away, "
           "ValueError for input the engine refused")
      .def("abandon", &PendingJob::abandon, "The caller went away: dropped if queued, else stopped at the next step")
      .def("done", &PendingJob::done);

  py::class_<PyBatcher>(m, "Batcher")
      .def(py::init<py::object, int64_t, int64_t, double, int64_t, int, py::object, std::optional<int64_t>>(),
           py::arg("run"), py::arg("max_batch") = 64, py::arg("max_tokens") = 16384, py::arg("max_delay") = 0.003,
           py::arg("max_queue") = 4096, py::arg("workers") = 2, py::arg("on_batch") = py::none(),
           py::arg("max_per_client") = std::nullopt)
      .def("submit", &PyBatcher::submit, py::arg("ids"), py::arg("options"), py::arg("timeout") = std::nullopt,
           py::arg("client") = "", py::arg("background") = false, py::call_guard<py::gil_scoped_release>(),
           "Queues the sentences as jobs of at most max_batch; raises QueueFull when they would overflow the "
           "queue or the client's share of it. timeout: seconds the caller will wait (its deadline)")
      .def("close", &PyBatcher::close, py::call_guard<py::gil_scoped_release>(), "Finishes what is queued, then stops")
      .def_property_readonly("queued",
                             [](PyBatcher& b) {
                               py::gil_scoped_release release;
                               return b.batcher().queued();
                             })
      .def_property_readonly("running",
                             [](PyBatcher& b) {
                               py::gil_scoped_release release;
                               return b.batcher().running();
                             })
      .def_property_readonly("max_batch", [](PyBatcher& b) { return b.batcher().max_batch(); })
      .def_property_readonly("stats", [](PyBatcher& b) {
        BatcherStats s;
        {
          py::gil_scoped_release release;
          s = b.batcher().stats();
        }
        return py::dict(py::arg("batches") = s.batches, py::arg("sentences") = s.sentences,
                        py::arg("abandoned") = s.abandoned);
      });
}

}  // namespace seq2seq
