// seq2seq-serve: the translation service's Translate, TranslateStream, ListModels and
// GetModel in C++ (the same proto, limits, messages and batching rules as `seq2seq serve`),
// so that a call's transport, validation, tokenization and batching run without Python.
// Evaluate, which scores with sacreBLEU and compares with the Python reference decoder,
// stays with `seq2seq serve`. docs/server.md says when to run which.
//
//   seq2seq-serve --model NAME=EXPORT_DIR [--port 50051] [--threads 1] [--workers 0] ...
//   (seq2seq-serve --help lists every option)
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../batcher.h"
#include "../common.h"
#include "../engine.h"
#include "../io/export_reader.h"
#include "../io/text.h"
#include "../io/tokenizer.h"
#include "seq2seq/v1/translation.grpc.pb.h"

namespace seq2seq {
namespace {

namespace pb = ::seq2seq::v1;
using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

const char* kService = "seq2seq.v1.TranslationService";
// The methods' places in the service of proto/seq2seq/v1/translation.proto.
constexpr int kTranslateIndex = 0, kTranslateStreamIndex = 1, kEvaluateIndex = 2, kListModelsIndex = 3, kGetModelIndex = 4;

// TranslateStream's messages as bytes, each decoded by the handler (Service's constructor says why).
using RawStream = grpc::ServerReaderWriter<pb::TranslateResponse, grpc::ByteBuffer>;

struct Config {
  std::map<std::string, std::string> models;  // name -> export directory
  std::string host = "127.0.0.1";
  int port = 50051;
  int64_t threads = 1, workers = 0, max_batch = 64, max_batch_tokens = 16384, max_queue = 4096;
  int64_t max_queue_per_client = 0;  // 0: half of max_queue
  double max_delay_ms = 3.0, grace_s = 10.0;
  double stream_idle_s = 60.0;       // a TranslateStream idle this long, nothing in flight, is ended; 0: never
  int64_t max_stream_pending = 32;   // requests of one TranslateStream in flight at once
  std::string compute_type = "float32", device = "cpu";
  int64_t max_chars = 2000, max_tokens = 256, max_sentences = 256, max_beam = 32, max_length = 512;
  int64_t max_request_cost = 65536;  // server/service.py's Limits.max_cost
  int64_t background_cost = 4096;    // costlier requests wait behind cheaper ones (ServerConfig.background_cost)
  int64_t max_message_bytes = 4 << 20, rpc_threads = 128;
  int64_t max_source_tokens = 1024;  // as the Python Engine's
  std::string token, tls_cert, tls_key;
  std::string tls_cert_pem, tls_key_pem;  // the files' contents, checked by check_tls
};

const char* kUsage =
    "usage: seq2seq-serve --model NAME=EXPORT_DIR [--model ...] [options]\n"
    "  --host 127.0.0.1       address to listen on\n"
    "  --port 50051           0: any free port (printed)\n"
    "  --threads 1            engine intra-op threads per batch (0: every core)\n"
    "  --compute-type float32 float32, int8 or bfloat16\n"
    "  --device cpu           where the engines run: cpu, cuda or cuda:N\n"
    "  --workers 0            engine batches run at once (0: cores // threads)\n"
    "  --max-batch 64         sentences per engine batch\n"
    "  --max-batch-tokens 16384  source tokens x beam per engine batch\n"
    "  --max-delay-ms 3       how long a batch waits for more requests\n"
    "  --max-queue 4096       queued sentences before RESOURCE_EXHAUSTED\n"
    "  --max-queue-per-client 0  queued sentences one client (a connection) may hold; 0: half of --max-queue\n"
    "  --max-chars 2000 --max-tokens 256 --max-sentences 256 --max-beam 32   per-request limits\n"
    "  --background-cost 4096 costlier requests wait behind cheaper ones and run on all workers but one\n"
    "  --max-request-cost 65536  decoding steps a request may cost: sentences x beam x the longest output\n"
    "                         each may reach; beyond, RESOURCE_EXHAUSTED before it is queued\n"
    "  --max-message-bytes 4194304\n"
    "  --rpc-threads 128      calls handled at once\n"
    "  --token TOKEN          require 'authorization: Bearer TOKEN' (shows in ps: prefer --token-file or\n"
    "                         $SEQ2SEQ_TOKEN, read when neither flag is given)\n"
    "  --token-file FILE      the token from this file's one line (a trailing newline is dropped; an empty\n"
    "                         or unreadable file is an error)\n"
    "  --tls-cert FILE --tls-key FILE   serve TLS: a PEM certificate chain and its unencrypted PEM key\n"
    "  --grace 10             seconds in-flight calls get on SIGTERM\n"
    "  --stream-idle-s 60     a TranslateStream with nothing in flight that sends no request for this long\n"
    "                         is ended (CANCELLED); 0: never\n"
    "  --max-stream-pending 32   requests of one TranslateStream in flight at once; the stream's further\n"
    "                         requests wait to be read\n";

// One JSON object per line on stderr, whole lines even when calls end at once.
void log_event(const nlohmann::json& event) {
  static std::mutex mu;
  const std::string line = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

// How long a stop waits, after the grace period, for gRPC to end the calls it cancelled.
constexpr double kStopMarginS = 5.0;

std::atomic<int64_t> calls_in_flight{0};  // the service's handlers running, for the stop's log line
// When a stop's grace period ends: gRPC then cancels the calls left, and their callers get UNAVAILABLE.
std::atomic<Clock::rep> grace_ends{Clock::time_point::max().time_since_epoch().count()};

// A caller whose deadline passes cancels the call; the cancel reaches the server about when the
// server's own copy of the deadline (the caller's, carried in the call) passes.
constexpr auto kDeadlineSlack = std::chrono::milliseconds(100);

// The status a caller gets for a call that ended before its handler answered (the handler's
// status is never sent): its deadline passed, the stop cancelled it once the grace period was
// over, or the caller cancelled it. As server/metrics.py's Metrics.ended.
const char* ended(const ServerContext* ctx) {
  if (std::chrono::system_clock::now() + kDeadlineSlack > ctx->deadline()) return "DEADLINE_EXCEEDED";
  if (Clock::now().time_since_epoch().count() >= grace_ends) return "UNAVAILABLE";
  return "CANCELLED";
}

// Runs an RPC's body and logs the call as one line, as the Python server does, with the status
// its caller gets.
template <typename Body>
Status logged(const char* method, ServerContext* ctx, const std::string& request_id, int sentences, Body body) {
  const auto started = Clock::now();
  ++calls_in_flight;
  const Status status = body();
  --calls_in_flight;
  static const char* const names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                      "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int code = status.error_code();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  log_event({{"method", method},
             {"status", ctx->IsCancelled() ? ended(ctx) : code >= 0 && code <= 16 ? names[code] : "UNKNOWN"},
             {"ms", std::round(ms * 100) / 100}, {"request_id", request_id}, {"sentences", sentences},
             {"peer", ctx->peer()}});
  return status;
}

// The first character of ``text`` the tokenizer can spell only with byte pieces, quoted with
// its code point ("'Ж' (U+0416)"); empty when every character is in the vocabulary.
std::string unknown_character(const Tokenizer& tok, const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    const unsigned char lead = text[i];
    if (lead >= 0xF0) n = 4;
    else if (lead >= 0xE0) n = 3;
    else if (lead >= 0xC0) n = 2;
    const std::string ch = text.substr(i, n);
    for (int64_t id : tok.encode(ch)) {
      if (!tok.is_byte(id)) continue;
      uint32_t cp = n == 1 ? lead : lead & (0x7F >> n);
      for (size_t k = 1; k < n && i + k < text.size(); ++k) cp = (cp << 6) | (text[i + k] & 0x3F);
      char code[16];
      std::snprintf(code, sizeof code, "U+%04X", cp);
      return "'" + ch + "' (" + code + ")";
    }
    i += n;
  }
  return "";
}

struct Model {
  std::string name, dir, source_language, target_language;
  std::string family, task;
  int64_t src_vocab = 0, tgt_vocab = 0;
  uint64_t parameters = 0;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Tokenizer> src, tgt;
  std::unique_ptr<Batcher> batcher;
  int64_t token_bytes = 0;  // the most bytes one target token adds to a text
  DecodeOptions defaults;   // the export's decoding defaults: what a request that sets no option gets
};

std::unique_ptr<Model> load_model(const std::string& name, const std::string& dir, const Config& cfg, int workers) {
  auto m = std::make_unique<Model>();
  m->name = name;
  m->dir = dir;
  LoadedExport exp = load_export(dir);
  const auto config = nlohmann::json::parse(read_file(dir + "/config.json"));
  const auto data = config.value("data", nlohmann::json::object());
  m->source_language = data.value("src", "");
  m->target_language = data.value("tgt", "");
  m->task = config.value("task", "translation");
  m->defaults = exp.decoding;
  // As server/service.py: else every request that sets no option would be refused.
  if (m->defaults.beam_size > cfg.max_beam || m->defaults.max_length > cfg.max_length)
    throw std::runtime_error("model '" + name + "': its export's decoding defaults (beam_size " +
                             std::to_string(m->defaults.beam_size) + ", max_length " +
                             std::to_string(m->defaults.max_length) + ") exceed this server's limits (--max-beam " +
                             std::to_string(cfg.max_beam) + ", max_length " + std::to_string(cfg.max_length) +
                             "); raise --max-beam or export the model with smaller defaults");
  for (const auto& [_, t] : exp.weights) m->parameters += t.numel();
  m->engine = std::make_unique<Engine>(exp.model_config, exp.weights, cfg.threads, cfg.compute_type, "device",
                                       cfg.device);
  m->family = m->engine->model().family;
  m->src_vocab = m->engine->model().source_vocabulary;
  m->tgt_vocab = m->engine->model().target_vocabulary;
  const TokenizerFiles tokenizers = tokenizer_files(dir);
  m->src = load_sentencepiece(tokenizers.source, tokenizers.source_vocab);
  m->tgt = load_sentencepiece(tokenizers.target, tokenizers.target_vocab);
  for (int64_t id = 0; id < m->tgt_vocab; ++id)  // a token's piece alone, and the space before it
    m->token_bytes = std::max(m->token_bytes, static_cast<int64_t>(m->tgt->decode({id}).size()) + 1);
  const Engine* engine = m->engine.get();
  m->batcher = std::make_unique<Batcher>(
      [engine](const std::vector<std::vector<int64_t>>& s, const DecodeOptions& o, const Abandoned& a) {
        return engine->translate(s, o, a);
      },
      cfg.max_batch, cfg.max_batch_tokens, cfg.max_delay_ms / 1000, cfg.max_queue, workers,
      cfg.max_queue_per_client > 0 ? cfg.max_queue_per_client : std::max<int64_t>(1, (cfg.max_queue + 1) / 2));
  return m;
}

// One TranslateRequest in flight: its jobs' answers are gathered here, from worker threads.
struct Call {
  const Model* model = nullptr;
  std::string request_id;
  bool scores = false;
  std::vector<std::vector<Hypothesis>> hypotheses;
  std::mutex mu;
  std::condition_variable cv;
  size_t left = 0;  // jobs not answered yet
  Outcome::Kind kind = Outcome::kDone;
  std::string error;
  std::function<void(std::shared_ptr<Call>)> finished;  // when every job is answered
  std::shared_ptr<std::atomic<bool>> cancelled;  // set: the call's queued sentences are dropped
};

Status invalid(const std::string& message) { return Status(StatusCode::INVALID_ARGUMENT, message); }

// The most bytes a TranslateResponse to these sentences can take, as server/service.py's
// response_bound: each sentence's n_best hypotheses of at most its maximum length (decoding.cpp's
// length_limits) in tokens of at most token_bytes, their scores, and their attention
// ((tokens + 1) x (source tokens + 1) floats), with every field's tag and length.
int64_t response_bound(const Model& m, const std::string& request_id, const std::vector<std::vector<int64_t>>& ids,
                       const DecodeOptions& opts) {
  int64_t total = 16 + request_id.size() + m.name.size();
  const auto longest = length_limits(ids, opts).second;
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto n = static_cast<int64_t>(ids[i].size());
    const int64_t tokens = longest[i];
    const int64_t attention = opts.return_attention ? 24 + 4 * (tokens + 1) * (n + 1) : 0;
    total += 8 + opts.n_best * (40 + tokens * m.token_bytes + attention);
  }
  return total;
}

// What a request may cost the engine, as server/service.py's request_cost: each sentence's beam
// times the longest output its options allow, summed.
int64_t request_cost(const std::vector<std::vector<int64_t>>& ids, const DecodeOptions& opts) {
  int64_t total = 0;
  for (const int64_t longest : length_limits(ids, opts).second) total += opts.beam_size * longest;
  return total;
}

Status too_costly(int64_t cost, size_t sentences, const DecodeOptions& opts, int64_t limit) {
  return Status(StatusCode::RESOURCE_EXHAUSTED,
                "the request could cost " + std::to_string(cost) + " decoding steps (" + std::to_string(sentences) +
                    " sentences x beam " + std::to_string(opts.beam_size) + " x up to " +
                    std::to_string(opts.max_length) + " output tokens each, fewer for short sources), over the " +
                    "server's limit of " + std::to_string(limit) + " (--max-request-cost); send fewer or shorter " +
                    "sentences, or a smaller beam_size or max_length");
}

// server/service.py's idle_stream, in the same words.
std::string idle_stream(double seconds) {
  std::ostringstream shown;
  shown << seconds;
  return "the stream sent no request for " + shown.str() + " s with nothing in flight (--stream-idle-s); open a " +
         "stream when there is something to translate";
}

Status too_big(const char* what, int64_t size, int64_t limit) {
  return Status(StatusCode::RESOURCE_EXHAUSTED,
                std::string("the response ") + what + " " + std::to_string(size) + " bytes, over the server's limit of " +
                    std::to_string(limit) + " (--max-message-bytes); ask for fewer sentences, a smaller n_best or " +
                    "max_length, or no attention");
}

// Every call's token check, the service's methods' and unknown methods' alike, in
// server/app.py's words (BearerToken): a call carrying several 'authorization' entries is
// refused whichever of them is valid.
Status authorize(const std::string& token, const grpc::ServerContextBase& ctx) {
  if (token.empty()) return Status::OK;
  const auto [first, last] = ctx.client_metadata().equal_range("authorization");
  const auto n = std::distance(first, last);
  if (n > 1)
    return Status(StatusCode::UNAUTHENTICATED, "the call carries " + std::to_string(n) +
                                                   " 'authorization' entries; send one: 'authorization: Bearer TOKEN'");
  const std::string expected = "Bearer " + token;
  const std::string given = n ? std::string(first->second.data(), first->second.size()) : "";
  // Compared in time independent of where they differ.
  unsigned char diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i) diff |= expected[i] ^ (i < given.size() ? given[i] : 0);
  if (diff) return Status(StatusCode::UNAUTHENTICATED, "a valid 'authorization: Bearer TOKEN' is required");
  return Status::OK;
}

// Methods the server does not have: without the token UNAUTHENTICATED, as every other call
// (a caller learns nothing, not even which methods exist), else UNIMPLEMENTED in grpcio's words.
class UnknownMethods final : public grpc::CallbackGenericService {
 public:
  explicit UnknownMethods(const std::string& token) : token_(token) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    struct Refusal : grpc::ServerGenericBidiReactor {
      explicit Refusal(const Status& status) { Finish(status); }
      void OnDone() override { delete this; }
    };
    const Status status = authorize(token_, *ctx);
    return new Refusal(status.ok() ? Status(StatusCode::UNIMPLEMENTED, "Method not found!") : status);
  }

 private:
  const std::string token_;
};

class Service final : public pb::TranslationService::Service {
 public:
  explicit Service(const Config& cfg) : cfg_(cfg) {
    // gRPC's own decoding fails a Read exactly as the end of the stream does: a message that is
    // not a TranslateRequest would end the stream OK, unanswered. Read as bytes, it is named.
    auto handler = [](Service* s, ServerContext* ctx, RawStream* stream) { return s->TranslateStream(ctx, stream); };
    MarkMethodStreamed(kTranslateStreamIndex,
                       new grpc::internal::BidiStreamingHandler<Service, grpc::ByteBuffer, pb::TranslateResponse>(
                           handler, this));
    // The unary methods too: gRPC answers a request it cannot decode with INTERNAL before any
    // handler runs, unlogged. Read as bytes, it gets INVALID_ARGUMENT naming the message expected.
    unary<pb::TranslateRequest, pb::TranslateResponse>(kTranslateIndex, "Translate", &Service::Translate);
    unary<pb::ListModelsRequest, pb::ListModelsResponse>(kListModelsIndex, "ListModels", &Service::ListModels);
    unary<pb::GetModelRequest, pb::ModelInfo>(kGetModelIndex, "GetModel", &Service::GetModel);
    using Split = grpc::ServerSplitStreamer<grpc::ByteBuffer, pb::EvaluateEvent>;
    MarkMethodStreamed(kEvaluateIndex, new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer, pb::EvaluateEvent>(
                                           [this](ServerContext* ctx, Split* streamer) {
                                             grpc::ByteBuffer bytes;
                                             pb::EvaluateRequest request;
                                             if (!streamer->Read(&bytes) ||
                                                 !grpc::SerializationTraits<pb::EvaluateRequest>::Deserialize(
                                                      &bytes, &request).ok())
                                               return logged("Evaluate", ctx, "", 0,
                                                             [&] { return undecodable<pb::EvaluateRequest>(ctx); });
                                             return Evaluate(ctx, &request, nullptr);
                                           }));
  }

  void add(std::unique_ptr<Model> model) { models_[model->name] = std::move(model); }
  void set_ready() { ready_ = true; }
  std::map<std::string, std::unique_ptr<Model>>& models() { return models_; }

  Status Translate(ServerContext* ctx, const pb::TranslateRequest* request, pb::TranslateResponse* response) override {
    return logged("Translate", ctx, request->request_id(), request->sentences_size(),
                  [&] { return translate(ctx, request, response); });
  }

  Status TranslateStream(ServerContext* ctx, RawStream* stream) {
    return logged("TranslateStream", ctx, "", 0, [&] { return translate_stream(ctx, stream); });
  }

  Status Evaluate(ServerContext* ctx, const pb::EvaluateRequest* request, grpc::ServerWriter<pb::EvaluateEvent>*) override {
    return logged("Evaluate", ctx, request->request_id(), request->sources_size(), [] {
      return Status(StatusCode::UNIMPLEMENTED,
                    "Evaluate runs on the Python server (seq2seq serve), which scores with sacreBLEU and decodes "
                    "with the Python reference too; this C++ front end serves Translate and TranslateStream");
    });
  }

  Status ListModels(ServerContext* ctx, const pb::ListModelsRequest*, pb::ListModelsResponse* response) override {
    return logged("ListModels", ctx, "", 0, [&] {
      Status status = admit(ctx);
      if (status.ok())
        for (const auto& [_, m] : models_) info(*m, response->add_models());
      return status;
    });
  }

  Status GetModel(ServerContext* ctx, const pb::GetModelRequest* request, pb::ModelInfo* response) override {
    return logged("GetModel", ctx, "", 0, [&] {
      Status status = admit(ctx);
      if (!status.ok()) return status;
      if (request->name().empty()) return invalid("name: which model?");
      const Model* m = nullptr;
      status = find(request->name(), &m);
      if (status.ok()) info(*m, response);
      return status;
    });
  }

 private:
  template <typename Request, typename Response>
  void unary(int index, const char* method,
             Status (Service::*behaviour)(ServerContext*, const Request*, Response*)) {
    using Streamer = grpc::ServerUnaryStreamer<grpc::ByteBuffer, Response>;
    MarkMethodStreamed(index, new grpc::internal::StreamedUnaryHandler<grpc::ByteBuffer, Response>(
                                  [this, method, behaviour](ServerContext* ctx, Streamer* streamer) {
                                    grpc::ByteBuffer bytes;
                                    Request request;
                                    if (!streamer->Read(&bytes) ||
                                        !grpc::SerializationTraits<Request>::Deserialize(&bytes, &request).ok())
                                      return logged(method, ctx, "", 0, [&] { return undecodable<Request>(ctx); });
                                    Response response;
                                    const Status status = (this->*behaviour)(ctx, &request, &response);
                                    if (status.ok()) streamer->Write(response);
                                    return status;
                                  }));
  }

  template <typename Request>
  Status undecodable(ServerContext* ctx) const {
    const Status status = admit(ctx);  // a caller without the token learns nothing more
    if (!status.ok()) return status;
    const std::string message = Request::descriptor()->name();
    return invalid("the request could not be decoded as " + std::string(std::string("AEIOU").find(message[0]) != std::string::npos ? "an " : "a ") + message +
                   "; send the message proto/seq2seq/v1/translation.proto defines for this method");
  }

  Status translate(ServerContext* ctx, const pb::TranslateRequest* request, pb::TranslateResponse* response) {
    Status status = admit(ctx);
    if (!status.ok()) return status;
    std::shared_ptr<Call> call;
    status = start(ctx, *request, nullptr, std::make_shared<std::atomic<bool>>(false), &call);
    if (!status.ok()) return status;
    const auto deadline = call_deadline(ctx);
    std::unique_lock<std::mutex> lock(call->mu);
    // Woken by the answer; every 50 ms meanwhile to notice a cancelled call or a passed deadline.
    while (call->left > 0) {
      auto until = Clock::now() + std::chrono::milliseconds(50);
      if (deadline) until = std::min(until, *deadline);
      call->cv.wait_until(lock, until);
      if (call->left == 0) break;
      if (ctx->IsCancelled()) {
        call->cancelled->store(true);
        return Status(StatusCode::CANCELLED, "the call was cancelled");
      }
      if (deadline && Clock::now() >= *deadline) {
        call->cancelled->store(true);
        return Status(StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the translation was done");
      }
    }
    lock.unlock();
    return respond(*call, response);
  }

  Status translate_stream(ServerContext* ctx, RawStream* stream) {
    Status status = admit(ctx);
    if (!status.ok()) return status;
    // Requests are read here while a writer thread sends each response as soon as it is done.
    struct Shared {
      std::mutex mu;
      std::condition_variable cv;
      std::deque<std::shared_ptr<Call>> done;
      size_t pending = 0;
      bool reading = true;
      Status error;
      Clock::time_point read = Clock::now();  // when the last message arrived
    };
    auto shared = std::make_shared<Shared>();
    auto cancelled = std::make_shared<std::atomic<bool>>(false);  // the stream's, shared by its requests
    auto on_done = [shared](std::shared_ptr<Call> call) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->done.push_back(std::move(call));
      shared->cv.notify_all();
    };
    const auto idle = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg_.stream_idle_s));
    std::thread writer([&, shared] {
      for (;;) {
        std::unique_lock<std::mutex> lock(shared->mu);
        // Done when reading has ended and nothing is left to send: every call answered, or the
        // stream failed (an invalid request, a failed write, a cancel), whose other answers are dropped.
        const auto finished = [&] {
          return !shared->done.empty() || (!shared->reading && (shared->pending == 0 || !shared->error.ok()));
        };
        if (cfg_.stream_idle_s > 0) {
          // A stream that holds a thread and sends nothing is ended: the blocked Read returns
          // once the call is cancelled.
          while (!finished()) {
            if (shared->reading && shared->pending == 0 && Clock::now() - shared->read >= idle) {
              if (shared->error.ok()) shared->error = Status(StatusCode::CANCELLED, idle_stream(cfg_.stream_idle_s));
              ctx->TryCancel();
              break;
            }
            shared->cv.wait_until(lock, std::max(shared->read + idle, Clock::now() + std::chrono::milliseconds(100)));
          }
          shared->cv.wait(lock, finished);
        } else {
          shared->cv.wait(lock, finished);
        }
        if (shared->done.empty()) return;
        auto call = std::move(shared->done.front());
        shared->done.pop_front();
        --shared->pending;
        shared->cv.notify_all();  // the reader may be waiting for a free place
        lock.unlock();
        pb::TranslateResponse response;
        Status s = respond(*call, &response);
        if (s.ok() && stream->Write(response)) continue;
        lock.lock();
        if (shared->error.ok()) shared->error = s.ok() ? Status(StatusCode::CANCELLED, "the caller went away") : s;
        cancelled->store(true);  // the stream ends with this status; what is still queued is dropped
        return;
      }
    });
    // A message that cannot be decoded ends the stream after the requests before it are answered.
    Status undecodable;
    grpc::ByteBuffer bytes;
    for (int64_t n = 1; stream->Read(&bytes); ++n) {
      {
        // At most max_stream_pending requests in flight; the stream's next ones wait unread.
        std::unique_lock<std::mutex> lock(shared->mu);
        shared->read = Clock::now();
        shared->cv.wait(lock, [&] {
          return shared->pending < static_cast<size_t>(cfg_.max_stream_pending) || !shared->error.ok();
        });
      }
      pb::TranslateRequest request;
      if (!grpc::SerializationTraits<pb::TranslateRequest>::Deserialize(&bytes, &request).ok()) {
        undecodable = invalid("message " + std::to_string(n) + " of the stream could not be decoded as a " +
                              "TranslateRequest; send TranslateRequest messages of proto/seq2seq/v1/translation.proto");
        break;
      }
      std::shared_ptr<Call> call;
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (!shared->error.ok()) break;
        ++shared->pending;
      }
      Status s = start(ctx, request, on_done, cancelled, &call);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(shared->mu);
        --shared->pending;
        if (shared->error.ok()) shared->error = s;
        break;
      }
    }
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      if (!shared->error.ok() || ctx->IsCancelled()) {  // an invalid request or the caller's cancel ends it now
        cancelled->store(true);
        if (shared->error.ok()) shared->error = Status(StatusCode::CANCELLED, "the call was cancelled");
      }
      shared->reading = false;
      shared->cv.notify_all();
    }
    writer.join();
    std::lock_guard<std::mutex> lock(shared->mu);
    return shared->error.ok() ? undecodable : shared->error;
  }

  Status admit(ServerContext* ctx) const {
    const Status status = authorize(cfg_.token, *ctx);
    if (!status.ok()) return status;
    if (!ready_) return Status(StatusCode::UNAVAILABLE, "the models are still loading; retry shortly");
    return Status::OK;
  }

  Status find(const std::string& name, const Model** out) const {
    if (name.empty()) {
      if (models_.size() == 1) {
        *out = models_.begin()->second.get();
        return Status::OK;
      }
      return invalid("model: this server holds " + std::to_string(models_.size()) + " models; name one of " + names());
    }
    const auto it = models_.find(name);
    if (it == models_.end()) return Status(StatusCode::NOT_FOUND, "model '" + name + "' is not loaded; loaded: " + names());
    *out = it->second.get();
    return Status::OK;
  }

  std::string names() const {
    std::string out = "[";
    for (const auto& [name, _] : models_) out += (out.size() > 1 ? ", '" : "'") + name + "'";
    return out + "]";
  }

  Status options(const pb::DecodingOptions& msg, DecodeOptions* opts) const {
    opts->return_attention = msg.return_attention();
    if (msg.has_beam_size()) opts->beam_size = msg.beam_size();
    if (msg.has_n_best()) opts->n_best = msg.n_best();
    if (msg.has_max_length()) opts->max_length = msg.max_length();
    if (msg.has_length_penalty()) opts->length_penalty = msg.length_penalty();
    if (msg.has_alpha()) opts->alpha = msg.alpha();
    if (opts->beam_size < 1 || opts->beam_size > cfg_.max_beam)
      return invalid("options.beam_size must be within 1.." + std::to_string(cfg_.max_beam) + ", not " +
                     std::to_string(opts->beam_size));
    if (opts->max_length < 1 || opts->max_length > cfg_.max_length)
      return invalid("options.max_length must be within 1.." + std::to_string(cfg_.max_length) + ", not " +
                     std::to_string(opts->max_length));
    if (!std::isfinite(opts->alpha)) return invalid("options.alpha must be a finite number");
    try {
      validate_options(*opts);  // seq2seq.config.validate_decoding_options, message for message
    } catch (const std::exception& e) {
      return invalid(std::string("options: ") + e.what());
    }
    return Status::OK;
  }

  Status encode(const Model& m, const google::protobuf::RepeatedPtrField<std::string>& sentences,
                std::vector<std::vector<int64_t>>* ids) const {
    if (sentences.empty()) return invalid("sentences: the request holds no sentences");
    if (sentences.size() > cfg_.max_sentences)
      return invalid("sentences: " + std::to_string(sentences.size()) + " sentences in one request; the limit is " +
                     std::to_string(cfg_.max_sentences) + " (split the request)");
    const int64_t max_tokens = std::min(cfg_.max_tokens, cfg_.max_source_tokens);
    for (int i = 0; i < sentences.size(); ++i) {
      const std::string where = "sentences[" + std::to_string(i) + "]";
      const size_t chars = code_points(sentences[i]);
      if (static_cast<int64_t>(chars) > cfg_.max_chars)
        return invalid(where + " has " + std::to_string(chars) + " characters; the limit is " +
                       std::to_string(cfg_.max_chars));
      std::vector<int64_t> pieces;
      try {
        pieces = m.src->encode(normalize(sentences[i]));
      } catch (const std::exception& e) {
        return invalid(where + ": " + e.what());
      }
      if (pieces.empty()) return invalid(where + " is empty");
      if (m.task == "transliteration") {
        const std::string unknown = unknown_character(*m.src, normalize(sentences[i]));
        if (!unknown.empty())
          return invalid(where + ": " + unknown + " is a character this transliteration model was not trained on " +
                         "(it reads " + (m.source_language.empty() ? std::string("its source") : m.source_language) +
                         " names); send the name in the model's source script");
      }
      if (static_cast<int64_t>(pieces.size()) > max_tokens)
        return invalid(where + " has " + std::to_string(pieces.size()) + " tokens; the limit is " +
                       std::to_string(max_tokens));
      ids->push_back(std::move(pieces));
    }
    return Status::OK;
  }

  // Validates the request and queues its sentences; the call's `finished` runs when all are answered.
  Status start(ServerContext* ctx, const pb::TranslateRequest& request,
               std::function<void(std::shared_ptr<Call>)> finished, std::shared_ptr<std::atomic<bool>> cancelled,
               std::shared_ptr<Call>* out) const {
    const Model* m = nullptr;
    Status status = find(request.model(), &m);
    if (!status.ok()) return status;
    DecodeOptions opts = m->defaults;
    std::vector<std::vector<int64_t>> ids;
    status = options(request.options(), &opts);
    if (status.ok()) status = encode(*m, request.sentences(), &ids);
    if (!status.ok()) return status;
    const int64_t cost = request_cost(ids, opts);
    if (cost > cfg_.max_request_cost) return too_costly(cost, ids.size(), opts, cfg_.max_request_cost);
    // Refused before decoding: else gRPC would refuse to send the answer after it.
    const int64_t bound = response_bound(*m, request.request_id(), ids, opts);
    if (bound > cfg_.max_message_bytes) return too_big("could reach", bound, cfg_.max_message_bytes);
    auto call = std::make_shared<Call>();
    call->model = m;
    call->request_id = request.request_id();
    call->scores = request.options().return_scores();
    call->hypotheses.resize(ids.size());
    call->finished = std::move(finished);
    call->cancelled = cancelled;
    const int64_t batch = m->batcher->max_batch();
    call->left = (ids.size() + batch - 1) / batch;
    auto done_for = [call](size_t first, size_t) {
      return [call, first](Outcome outcome) {
        std::function<void(std::shared_ptr<Call>)> finished;
        {
          std::lock_guard<std::mutex> lock(call->mu);
          if (outcome.kind == Outcome::kDone) {
            std::move(outcome.hypotheses.begin(), outcome.hypotheses.end(), call->hypotheses.begin() + first);
          } else if (call->kind == Outcome::kDone) {
            call->kind = outcome.kind;
            call->error = outcome.error;
          }
          if (--call->left == 0) finished = call->finished;
          call->cv.notify_all();
        }
        if (finished) finished(call);
      };
    };
    std::string why;
    const bool background = cost > cfg_.background_cost;
    if (!m->batcher->submit(std::move(ids), opts, call_deadline(ctx), cancelled, done_for, ctx->peer(), &why,
                            background))
      return Status(StatusCode::RESOURCE_EXHAUSTED, why);
    *out = call;
    return Status::OK;
  }

  static std::optional<Clock::time_point> call_deadline(ServerContext* ctx) {
    const auto remaining = ctx->deadline() - std::chrono::system_clock::now();
    if (remaining > std::chrono::hours(24 * 365)) return std::nullopt;  // the caller set no deadline
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(remaining);
  }

  Status respond(const Call& call, pb::TranslateResponse* response) const {
    switch (call.kind) {
      case Outcome::kDone: break;
      case Outcome::kDeadline:
        return Status(StatusCode::DEADLINE_EXCEEDED, "the deadline passed while the request was queued");
      case Outcome::kCancelled: return Status(StatusCode::CANCELLED, "the call was cancelled");
      case Outcome::kInvalid: return invalid(call.error);
      case Outcome::kError: return Status(StatusCode::INTERNAL, "the engine failed: " + call.error);
    }
    response->set_request_id(call.request_id);
    response->set_model(call.model->name);
    for (const auto& sentence : call.hypotheses) {
      auto* translation = response->add_translations();
      for (const auto& h : sentence) {
        auto* out = translation->add_hypotheses();
        try {
          out->set_text(call.model->tgt->decode(h.tokens));
        } catch (const std::exception& e) {
          return Status(StatusCode::INTERNAL, e.what());
        }
        if (call.scores) {
          out->set_score(static_cast<float>(h.score));
          out->set_log_prob(static_cast<float>(h.log_prob));
        }
        if (h.attention) {
          // A Transformer's is (rows, heads, columns): the message carries the heads' mean.
          const at::Tensor& full = *h.attention;
          const at::Tensor a = (full.dim() == 3 ? full.mean(1) : full).contiguous().to(at::kFloat);
          auto* att = out->mutable_attention();
          att->set_rows(a.size(0));
          att->set_columns(a.size(1));
          att->mutable_weights()->Add(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
        }
      }
    }
    const auto size = static_cast<int64_t>(response->ByteSizeLong());  // the bound should make this impossible
    return size > cfg_.max_message_bytes ? too_big("is", size, cfg_.max_message_bytes) : Status::OK;
  }

  void info(const Model& m, pb::ModelInfo* out) const {
    out->set_name(m.name);
    out->set_family(m.family);
    out->set_source_language(m.source_language);
    out->set_target_language(m.target_language);
    out->set_source_vocabulary(m.src_vocab);
    out->set_target_vocabulary(m.tgt_vocab);
    out->set_compute_type(m.engine->compute_type());
    out->set_parameters(m.parameters);
    out->set_backend("cpp");
    out->set_task(m.task);
    pb::DecodingOptions* d = out->mutable_defaults();
    d->set_beam_size(static_cast<int32_t>(m.defaults.beam_size));
    d->set_n_best(static_cast<int32_t>(m.defaults.n_best));
    d->set_max_length(static_cast<int32_t>(m.defaults.max_length));
    d->set_length_penalty(m.defaults.length_penalty);
    d->set_alpha(static_cast<float>(m.defaults.alpha));
  }

  const Config& cfg_;
  std::map<std::string, std::unique_ptr<Model>> models_;
  std::atomic<bool> ready_{false};
};

// --token-file's one line, one trailing newline dropped, as server/app.py's bearer_token.
std::string read_token_file(const std::string& path) {
  std::string text;
  try {
    text = read_file(path);
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("--token-file ") + e.what());
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  if (text.empty()) throw std::invalid_argument("--token-file " + path + ": the file is empty; write the token in it");
  if (text.find_first_of("\r\n") != std::string::npos)
    throw std::invalid_argument("--token-file " + path +
                                ": holds more than one line; write the token alone on one line");
  return text;
}

// The PEM certificate chain and key, read and checked as a pair before anything starts, in
// server/app.py's words (check_tls): given files it cannot use, gRPC says only that it cannot listen.
void check_tls(Config& cfg) {
  auto pem = [](const std::string& flag, const std::string& path, const std::string& label, const char* what) {
    std::string text;
    try {
      text = read_file(path);
    } catch (const std::exception& e) {
      throw std::invalid_argument(flag + " " + e.what());
    }
    if (text.find("-----BEGIN ") == std::string::npos || text.find(label + "-----") == std::string::npos)
      throw std::invalid_argument(flag + " " + path + ": not a PEM " + what + " (no '-----BEGIN ..." + label +
                                  "-----' line)");
    return text;
  };
  cfg.tls_cert_pem = pem("--tls-cert", cfg.tls_cert, "CERTIFICATE", "certificate");
  cfg.tls_key_pem = pem("--tls-key", cfg.tls_key, "PRIVATE KEY", "private key");
  if (cfg.tls_key_pem.find("ENCRYPTED") != std::string::npos)
    throw std::invalid_argument("--tls-key " + cfg.tls_key + ": the key is encrypted, which grpc cannot use; write it "
                                "unencrypted (openssl pkey -in " + cfg.tls_key + " -out KEY.pem)");
  BIO* cert_bio = BIO_new_mem_buf(cfg.tls_cert_pem.data(), static_cast<int>(cfg.tls_cert_pem.size()));
  BIO* key_bio = BIO_new_mem_buf(cfg.tls_key_pem.data(), static_cast<int>(cfg.tls_key_pem.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  // No passphrase: OpenSSL would ask for one on the terminal.
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, [](char*, int, int, void*) { return 0; }, nullptr);
  const bool cert_read = cert != nullptr, key_read = key != nullptr;
  const bool pair = cert_read && key_read && X509_check_private_key(cert, key) == 1;
  X509_free(cert);
  EVP_PKEY_free(key);
  BIO_free(cert_bio);
  BIO_free(key_bio);
  ERR_clear_error();
  if (!cert_read) throw std::invalid_argument("--tls-cert " + cfg.tls_cert + ": not a usable PEM certificate");
  if (!key_read) throw std::invalid_argument("--tls-key " + cfg.tls_key + ": not a usable PEM private key");
  if (!pair)
    throw std::invalid_argument("--tls-key " + cfg.tls_key + " is not the key of the certificate in --tls-cert " +
                                cfg.tls_cert + "; give the key the certificate was made with");
}

Config parse(int argc, char** argv) {
  Config cfg;
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--model") {
      const auto eq = value.find('=');
      std::string name = eq == std::string::npos ? "" : value.substr(0, eq);
      std::string path = eq == std::string::npos ? value : value.substr(eq + 1);
      if (eq == std::string::npos) name = path.substr(path.find_last_of('/', path.size() - 2) + 1);
      if (name.empty() || path.empty()) throw std::invalid_argument("--model '" + value + "': write NAME=EXPORT_DIR");
      if (cfg.models.count(name)) throw std::invalid_argument("--model: the name '" + name + "' is given twice");
      cfg.models[name] = path;
    } else if (flag == "--host") cfg.host = value;
    else if (flag == "--port") cfg.port = static_cast<int>(parse_integer(flag, value));
    else if (flag == "--threads") cfg.threads = parse_integer(flag, value);
    else if (flag == "--compute-type") cfg.compute_type = value;
    else if (flag == "--device") cfg.device = value;
    else if (flag == "--workers") cfg.workers = parse_integer(flag, value);
    else if (flag == "--max-batch") cfg.max_batch = parse_integer(flag, value);
    else if (flag == "--max-batch-tokens") cfg.max_batch_tokens = parse_integer(flag, value);
    else if (flag == "--max-delay-ms") cfg.max_delay_ms = parse_number(flag, value);
    else if (flag == "--max-queue") cfg.max_queue = parse_integer(flag, value);
    else if (flag == "--max-queue-per-client") cfg.max_queue_per_client = parse_integer(flag, value);
    else if (flag == "--max-chars") cfg.max_chars = parse_integer(flag, value);
    else if (flag == "--max-tokens") cfg.max_tokens = parse_integer(flag, value);
    else if (flag == "--max-sentences") cfg.max_sentences = parse_integer(flag, value);
    else if (flag == "--max-beam") cfg.max_beam = parse_integer(flag, value);
    else if (flag == "--max-request-cost") cfg.max_request_cost = parse_integer(flag, value);
    else if (flag == "--background-cost") cfg.background_cost = parse_integer(flag, value);
    else if (flag == "--max-message-bytes") cfg.max_message_bytes = parse_integer(flag, value);
    else if (flag == "--rpc-threads") cfg.rpc_threads = parse_integer(flag, value);
    else if (flag == "--token") cfg.token = value;
    else if (flag == "--token-file") token_file = value;
    else if (flag == "--tls-cert") cfg.tls_cert = value;
    else if (flag == "--tls-key") cfg.tls_key = value;
    else if (flag == "--grace") cfg.grace_s = parse_number(flag, value);
    else if (flag == "--stream-idle-s") cfg.stream_idle_s = parse_number(flag, value);
    else if (flag == "--max-stream-pending") cfg.max_stream_pending = parse_integer(flag, value);
    else throw std::invalid_argument("unknown option " + flag + " (see --help)");
  }
  if (cfg.models.empty()) throw std::invalid_argument("give at least one --model NAME=EXPORT_DIR");
  if (cfg.port < 0 || cfg.port > 65535) throw std::invalid_argument("--port must be within 0..65535");
  if (cfg.threads < 0 || cfg.workers < 0) throw std::invalid_argument("--threads and --workers must be >= 0");
  if (cfg.max_queue_per_client < 0) throw std::invalid_argument("--max-queue-per-client must be >= 0 (0: half of --max-queue)");
  if (cfg.max_batch < 1 || cfg.max_batch_tokens < 1 || cfg.max_queue < 1 || cfg.max_delay_ms < 0)
    throw std::invalid_argument("--max-batch, --max-batch-tokens and --max-queue must be positive, --max-delay-ms >= 0");
  if (cfg.max_chars < 1 || cfg.max_tokens < 1 || cfg.max_sentences < 1 || cfg.max_beam < 1 ||
      cfg.max_message_bytes < 1 || cfg.rpc_threads < 1 || cfg.max_request_cost < 1 || cfg.max_stream_pending < 1 ||
      cfg.background_cost < 1)
    throw std::invalid_argument("the --max-* limits, --background-cost and --rpc-threads must be positive");
  if (!(cfg.stream_idle_s >= 0)) throw std::invalid_argument("--stream-idle-s must be >= 0 (0: never)");
  if (cfg.tls_cert.empty() != cfg.tls_key.empty()) throw std::invalid_argument("TLS needs both --tls-cert and --tls-key");
  if (!cfg.tls_cert.empty()) check_tls(cfg);
  // As server/app.py's bearer_token: --token, else --token-file, else $SEQ2SEQ_TOKEN.
  if (!cfg.token.empty() && !token_file.empty()) throw std::invalid_argument("give --token or --token-file, not both");
  if (!token_file.empty()) cfg.token = read_token_file(token_file);
  const char* env_token = std::getenv("SEQ2SEQ_TOKEN");
  if (cfg.token.empty() && token_file.empty() && env_token) cfg.token = env_token;
  return cfg;
}

// As server/app.py's engine_workers: as many batches at once as fit the cores.
int engine_workers(const Config& cfg) {
  if (cfg.workers) return static_cast<int>(cfg.workers);
  cpu_set_t set;
  const int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  return std::max(1, static_cast<int>(cores / (cfg.threads ? cfg.threads : cores)));
}

int serve(const Config& cfg) {
  // SIGTERM and SIGINT are taken by sigwait below; every thread started from here inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  Service service(cfg);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!cfg.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({cfg.tls_key_pem, cfg.tls_cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  int port = 0;
  const std::string address = cfg.host + ":" + std::to_string(cfg.port);
  builder.AddListeningPort(address, credentials, &port);
  builder.RegisterService(&service);
  UnknownMethods unknown(cfg.token);
  builder.RegisterCallbackGenericService(&unknown);
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(cfg.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  grpc::ResourceQuota quota("seq2seq-serve");
  quota.SetMaxThreads(static_cast<int>(cfg.rpc_threads));
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) throw std::runtime_error("cannot listen on " + address + " (in use?)");
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(kService, false);  // NOT_SERVING while the models load
  health->SetServingStatus(false);
  log_event({{"event", "listening"}, {"address", cfg.host + ":" + std::to_string(port)},
             {"tls", !cfg.tls_cert.empty()}, {"token", !cfg.token.empty()}});
  const int workers = engine_workers(cfg);
  std::string names;
  for (const auto& [name, dir] : cfg.models) {
    service.add(load_model(name, dir, cfg, workers));
    names += (names.empty() ? "" : ", ") + name;
    log_event({{"event", "model_loaded"}, {"model", name}, {"path", dir}, {"backend", "cpp"},
               {"workers", workers}, {"threads", cfg.threads}});
  }
  service.set_ready();
  health->SetServingStatus(true);
  health->SetServingStatus(kService, true);
  std::cout << "serving " << names << " on " << cfg.host << ":" << port << std::endl;

  int sig = 0;
  sigwait(&signals, &sig);
  grace_ends = (Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.grace_s)))
                   .time_since_epoch()
                   .count();
  // Shutdown returns once every handler has; one that never does would keep the process
  // alive, so the stop has a deadline of its own.
  std::thread([grace = cfg.grace_s, sig] {
    std::this_thread::sleep_for(std::chrono::duration<double>(grace + kStopMarginS));
    log_event({{"event", "stopped"}, {"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"grace_s", grace},
               {"calls_abandoned", calls_in_flight.load()}, {"every_call_ended", false}});
    std::_Exit(0);
  }).detach();
  // NOT_SERVING, no new calls, in-flight calls finish within the grace period.
  health->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(cfg.grace_s)));
  nlohmann::json batches = nlohmann::json::object();
  for (auto& [name, m] : service.models()) {
    m->batcher->close();
    const BatcherStats s = m->batcher->stats();
    batches[name] = {{"batches", s.batches}, {"sentences", s.sentences}, {"abandoned", s.abandoned}};
  }
  log_event({{"event", "stopped"}, {"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"grace_s", cfg.grace_s},
             {"calls_abandoned", 0}, {"every_call_ended", true}, {"engine_batches", batches}});
  return 0;
}

}  // namespace
}  // namespace seq2seq

int main(int argc, char** argv) {
  try {
    return seq2seq::serve(seq2seq::parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "seq2seq-serve: error: " << e.what() << '\n';
    return 1;
  }
}
