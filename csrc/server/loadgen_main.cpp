// seq2seq-loadgen: N concurrent clients sending Translate calls, one sentence each, for T
// seconds or R calls, whichever ends first; prints one JSON line (calls, seconds, latency
// percentiles, errors by status). `seq2seq bench-server --load-generator cpp` runs it: a
// client whose own cost per call is small, so that on a machine shared with the server the
// clients take less of the CPU the server is measured on.
//
//   seq2seq-loadgen --target 127.0.0.1:50051 --sentences FILE [--clients 64] [--seconds 60]
//                   [--max-requests 20000] [--beam-size 5] [--model NAME] [--timeout 30]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../common.h"
#include "seq2seq/v1/translation.grpc.pb.h"

namespace {

namespace pb = ::seq2seq::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target, sentences_file, model;
  int64_t clients = 64, max_requests = 20000, beam_size = 5;
  double seconds = 60, timeout_s = 30;
};

const char* kUsage =
    "usage: seq2seq-loadgen --target HOST:PORT --sentences FILE [--clients N] [--seconds T] "
    "[--max-requests R] [--beam-size K] [--model NAME] [--timeout S]\n";

double number(const std::string& flag, const std::string& value) {
  double v = 0;
  try {
    v = seq2seq::parse_number(flag, value);
  } catch (const std::invalid_argument&) {
  }
  if (!(v > 0)) throw std::invalid_argument(flag + " needs a positive number, not '" + value + "'");
  return v;
}

// Counts must be whole: "--clients 1.5" is an error, not one client.
int64_t whole(const std::string& flag, const std::string& value) {
  const double v = number(flag, value);
  if (v != static_cast<double>(static_cast<int64_t>(v)))
    throw std::invalid_argument(flag + " needs a whole number, not '" + value + "'");
  return static_cast<int64_t>(v);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--target") o.target = value;
    else if (flag == "--sentences") o.sentences_file = value;
    else if (flag == "--model") o.model = value;
    else if (flag == "--clients") o.clients = whole(flag, value);
    else if (flag == "--seconds") o.seconds = number(flag, value);
    else if (flag == "--max-requests") o.max_requests = whole(flag, value);
    else if (flag == "--beam-size") o.beam_size = whole(flag, value);
    else if (flag == "--timeout") o.timeout_s = number(flag, value);
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (o.target.empty() || o.sentences_file.empty()) throw std::invalid_argument("--target and --sentences are required");
  return o;
}

std::vector<std::string> read_sentences(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("--sentences: cannot read " + path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  if (out.empty()) throw std::invalid_argument("--sentences: " + path + " holds no sentence");
  return out;
}

// As server/loadtest.py's percentile: the value at index q * n of the sorted list.
double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(q * values.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::vector<std::string> sentences;
  try {
    o = parse(argc, argv);
    sentences = read_sentences(o.sentences_file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seq2seq-loadgen: %s\n%s", e.what(), kUsage);
    return 2;
  }
  std::atomic<int64_t> counter{0};
  std::mutex lock;
  std::vector<double> latencies;
  std::map<std::string, int64_t> errors;
  const auto started = Clock::now();
  const auto end = started + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));

  auto client = [&](int64_t k) {
    auto stub = pb::TranslationService::NewStub(grpc::CreateChannel(o.target, grpc::InsecureChannelCredentials()));
    std::vector<double> mine;
    while (Clock::now() < end) {
      const int64_t i = counter.fetch_add(1);
      if (i >= o.max_requests) break;
      pb::TranslateRequest request;
      if (!o.model.empty()) request.set_model(o.model);
      request.add_sentences(sentences[(i + k) % sentences.size()]);
      request.mutable_options()->set_beam_size(static_cast<int32_t>(o.beam_size));
      pb::TranslateResponse response;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::duration_cast<std::chrono::system_clock::duration>(
                               std::chrono::duration<double>(o.timeout_s)));
      const auto t = Clock::now();
      const auto status = stub->Translate(&context, request, &response);
      const double seconds = std::chrono::duration<double>(Clock::now() - t).count();
      if (status.ok() && response.translations_size() == 1) {
        mine.push_back(seconds);
      } else {
        static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                      "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
        const int code = status.error_code();
        // An OK answer without one translation per sentence is wrong too, and counted.
        const std::string name = status.ok() ? "WRONG_ANSWER" : (code >= 0 && code <= 16 ? names[code] : "UNKNOWN");
        std::lock_guard<std::mutex> guard(lock);
        ++errors[name];
      }
    }
    std::lock_guard<std::mutex> guard(lock);
    latencies.insert(latencies.end(), mine.begin(), mine.end());
  };
  std::vector<std::thread> threads;
  for (int64_t k = 0; k < o.clients; ++k) threads.emplace_back(client, k);
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - started).count();
  nlohmann::json out = {{"requests", latencies.size()},
                        {"seconds", wall},
                        {"requests_per_s", latencies.size() / wall},
                        {"p50_ms", 1000 * percentile(latencies, 0.5)},
                        {"p90_ms", 1000 * percentile(latencies, 0.9)},
                        {"p99_ms", 1000 * percentile(latencies, 0.99)},
                        {"errors", errors}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
