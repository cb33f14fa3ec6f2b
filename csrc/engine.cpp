#include "engine.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "kernels.h"

namespace seq2seq {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Beam sizes beyond this only cost memory: a clear error rather than an allocation failure.
constexpr int64_t kMaxBeam = 256;

void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

double penalized(double log_prob, int64_t length, const DecodeOptions& opts) {
  if (opts.length_penalty == "gnmt") return log_prob / std::pow((5.0 + length) / 6.0, opts.alpha);
  if (opts.length_penalty == "average") return log_prob / static_cast<double>(length);
  return log_prob;
}

// Per-sentence (min, max) output lengths, as length_limits in decoding.py.
std::pair<std::vector<int64_t>, std::vector<int64_t>> length_limits(
    const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts) {
  std::vector<int64_t> mins, maxs;
  for (const auto& s : sources) {
    const auto n = static_cast<double>(s.size());
    int64_t hi = opts.max_length;
    if (opts.max_length_ratio != 0.0)
      hi = std::min(hi, static_cast<int64_t>(std::floor(opts.max_length_ratio * n)) + opts.max_length_extra);
    hi = std::max<int64_t>(hi, 1);
    const int64_t lo = std::max(opts.min_length, static_cast<int64_t>(std::floor(opts.min_length_ratio * n)));
    mins.push_back(std::min(lo, hi));
    maxs.push_back(hi);
  }
  return {mins, maxs};
}

at::Tensor ids_tensor(const std::vector<int64_t>& v) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::kLong);
}

}  // namespace

void validate_options(const DecodeOptions& o) {
  check(o.beam_size >= 1 && o.beam_size <= kMaxBeam,
        "beam_size must be within 1.." + std::to_string(kMaxBeam) + ", not " + std::to_string(o.beam_size));
  check(o.n_best >= 1 && o.n_best <= o.beam_size,
        "n_best must be within 1..beam_size (" + std::to_string(o.beam_size) + "), not " + std::to_string(o.n_best));
  check(o.length_penalty == "none" || o.length_penalty == "gnmt" || o.length_penalty == "average",
        "length_penalty must be none, gnmt or average, not " + o.length_penalty);
  check(std::isfinite(o.alpha) && o.alpha >= 0, "alpha must be a finite number >= 0");
  check(o.max_length >= 1, "max_length must be at least 1, not " + std::to_string(o.max_length));
  check(o.min_length >= 0, "min_length must be >= 0");
  check(std::isfinite(o.max_length_ratio) && o.max_length_ratio >= 0, "max_length_ratio must be >= 0");
  check(std::isfinite(o.min_length_ratio) && o.min_length_ratio >= 0, "min_length_ratio must be >= 0");
  check(o.max_length_extra >= 0, "max_length_extra must be >= 0");
}

at::Tensor Engine::get(const Weights& w, const std::string& name, std::vector<int64_t> shape, bool any_layout) const {
  auto it = w.find(name);
  check(it != w.end(), "missing tensor " + name);
  const at::Tensor& t = it->second;
  check(t.scalar_type() == at::kFloat, "tensor " + name + " must be float32");
  check(t.sizes() == at::IntArrayRef(shape),
        "tensor " + name + " has shape " + shape_str(t.sizes()) + ", the model needs " + shape_str(shape));
  return any_layout ? t : t.contiguous();
}

at::Tensor Engine::matrix(const Weights& w, const std::string& name, std::vector<int64_t> shape) const {
  return get(w, name, std::move(shape), /*any_layout=*/true);
}

Engine::Dense Engine::dense(const at::Tensor& w, at::Tensor b) const {
  Dense d{at::Tensor(), std::move(b), at::Tensor(), c10::IValue()};
  if (int8_) {
    d.packed = pack_int8(w, d.b.defined() ? std::optional<at::Tensor>(d.b) : std::nullopt);
  } else {
    // (in, out) in memory: MKL multiplies a batch by it directly, where the (out, in) layout
    // of nn.Linear makes it copy the whole matrix into its own layout at every call (up to
    // 40% of a batched decoding step). A lone row takes the same matrix-vector path either way.
    d.wt = w.t().contiguous();  // no copy when the caller hands the matrix over transposed in memory
    d.onednn = pack_onednn(w);
  }
  return d;
}

at::Tensor Engine::apply(const Dense& d, const at::Tensor& x) const {
  if (int8_) return linear_int8(x, d.packed);
  // oneDNN costs about 10 us a call more than MKL, which a lone row or a small product
  // does not earn back (measured per layer shape: benchmarks/linear_backends.py, docs/bench.md).
  const int64_t rows = x.size(0);
  if (d.onednn.defined() && rows >= 2 && rows * d.wt.size(0) * d.wt.size(1) >= (int64_t{1} << 19))
    return linear_onednn(x, d.onednn, d.b);
  return d.b.defined() ? at::addmm(d.b, x, d.wt) : at::mm(x, d.wt);
}

Engine::Engine(ModelSpec spec, const Weights& w, int64_t threads, const std::string& compute_type)
    : spec_(std::move(spec)), compute_type_(compute_type) {
  const auto& s = spec_;
  check(compute_type == "float32" || compute_type == "int8",
        "compute_type must be float32 or int8, not " + compute_type);
  int8_ = compute_type == "int8";
  check(s.family == "rnn" || s.family == "attention",
        "the engine runs the rnn and attention families; a " + s.family +
            " export is not supported yet: translate it with the Python reference (--backend python)");
  check(s.cell == "lstm" || s.cell == "gru", "cell must be lstm or gru");
  check(s.attention == "bahdanau" || s.attention == "dot" || s.attention == "general" || s.attention == "concat",
        "attention must be bahdanau, dot, general or concat");
  check(s.src_vocab > 4 && s.tgt_vocab > 4 && s.emb_dim > 0 && s.hidden > 0 && s.layers > 0,
        "vocabulary sizes, emb_dim, hidden and layers must be positive");
  check(!s.bidirectional || s.hidden % 2 == 0, "a bidirectional encoder needs an even hidden size");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  c10::InferenceMode guard;
  lstm_ = s.cell == "lstm";
  const bool attn = s.family == "attention";
  luong_ = attn && s.attention != "bahdanau";
  additive_ = attn && (s.attention == "bahdanau" || s.attention == "concat");
  const int64_t H = s.hidden, E = s.emb_dim, gates = (lstm_ ? 4 : 3);
  const int64_t dirs = s.bidirectional ? 2 : 1, He = H / dirs;

  enc_embed_ = get(w, "encoder.embed.weight", {s.src_vocab, E});
  for (int64_t l = 0; l < s.layers; ++l)
    for (int64_t d = 0; d < dirs; ++d) {
      const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
      const int64_t in = l == 0 ? E : He * dirs;
      enc_params_.push_back(get(w, "encoder.rnn.weight_ih" + sfx, {gates * He, in}));
      enc_params_.push_back(get(w, "encoder.rnn.weight_hh" + sfx, {gates * He, He}));
      enc_params_.push_back(get(w, "encoder.rnn.bias_ih" + sfx, {gates * He}));
      enc_params_.push_back(get(w, "encoder.rnn.bias_hh" + sfx, {gates * He}));
    }
  dec_embed_ = get(w, "embed.weight", {s.tgt_vocab, E});
  int64_t feed = 0;
  if (s.family == "rnn") feed = s.context_feed ? H : 0;
  else feed = (!luong_ || s.input_feed) ? H : 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string sfx = "_l" + std::to_string(l);
    const int64_t in = l == 0 ? E + feed : H;
    dec_.push_back({dense(matrix(w, "rnn.weight_ih" + sfx, {gates * H, in}), get(w, "rnn.bias_ih" + sfx, {gates * H})),
                    dense(matrix(w, "rnn.weight_hh" + sfx, {gates * H, H}), get(w, "rnn.bias_hh" + sfx, {gates * H}))});
  }
  int64_t out_in = H;
  if (s.family == "rnn") out_in = H + (s.context_feed ? H : 0);
  else if (!luong_) out_in = 2 * H + E;
  out_ = dense(matrix(w, "out.weight", {s.tgt_vocab, out_in}), get(w, "out.bias", {s.tgt_vocab}));
  if (attn) {
    const std::string score = additive_ ? "additive" : s.attention;
    if (additive_) {
      const int64_t A = s.attention_dim;
      check(A > 0, "attention_dim must be positive");
      key_w_ = get(w, "attn.key_proj.weight", {A, H});
      query_ = dense(matrix(w, "attn.query_proj.weight", {A, H}), get(w, "attn.query_proj.bias", {A}));
      v_ = get(w, "attn.v.weight", {1, A}).view({A});
    } else if (s.attention == "general") {
      key_w_ = get(w, "attn.key_proj.weight", {H, H});
    }
    if (luong_) combine_ = dense(matrix(w, "combine.weight", {H, 2 * H}));
  }
  // Anything else in the weights means they belong to a different model.
  size_t used = 2 + enc_params_.size() + 4 * dec_.size() + 2 + (key_w_.defined() ? 1 : 0) +
                (query_.defined() ? 3 : 0) + (combine_.defined() ? 1 : 0);
  check(w.size() == used, "the weights hold " + std::to_string(w.size()) + " tensors, this model uses " +
                              std::to_string(used) + ": they were exported from a different model");
}

std::pair<Engine::Source, Engine::Rows> Engine::encode(const std::vector<std::vector<int64_t>>& sources) const {
  const int64_t N = static_cast<int64_t>(sources.size());
  int64_t S = 0;
  for (const auto& s : sources) S = std::max<int64_t>(S, static_cast<int64_t>(s.size()) + 1);
  auto src = at::full({N, S}, kPad, at::kLong);
  auto lengths = at::empty({N}, at::kLong);
  auto* ids = src.data_ptr<int64_t>();
  auto* len = lengths.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    std::copy(sources[n].begin(), sources[n].end(), ids + n * S);
    ids[n * S + sources[n].size()] = kEos;
    len[n] = static_cast<int64_t>(sources[n].size()) + 1;
  }
  // Packed sequences, as nn.LSTM/GRU see them in the encoder: sorted longest first.
  auto sorted = lengths.sort(0, /*descending=*/true);
  const auto& sorted_len = std::get<0>(sorted);
  const auto& order = std::get<1>(sorted);
  const auto inverse = at::empty_like(order).scatter_(0, order, at::arange(N, at::kLong));
  auto packed = at::_pack_padded_sequence(at::embedding(enc_embed_, src).index_select(0, order), sorted_len, true);
  const int64_t dirs = spec_.bidirectional ? 2 : 1, He = spec_.hidden / dirs;
  auto h0 = at::zeros({spec_.layers * dirs, N, He}, at::kFloat);
  at::Tensor out, hy, cy;
  if (lstm_) {
    std::tie(out, hy, cy) = at::lstm(std::get<0>(packed), std::get<1>(packed), {h0, h0}, enc_params_, true,
                                     spec_.layers, 0.0, false, spec_.bidirectional);
  } else {
    std::tie(out, hy) = at::gru(std::get<0>(packed), std::get<1>(packed), h0, enc_params_, true, spec_.layers, 0.0,
                                false, spec_.bidirectional);
  }
  auto memory = std::get<0>(at::_pad_packed_sequence(out, std::get<1>(packed), true, 0.0, S)).index_select(0, inverse);
  // (layers * dirs, N, He) -> (layers, N, H): the directions of a layer side by side.
  auto join = [&](const at::Tensor& h) {
    auto u = h.index_select(1, inverse);
    if (!spec_.bidirectional) return u.contiguous();
    u = u.view({spec_.layers, 2, N, He});
    return at::cat({u.select(1, 0), u.select(1, 1)}, -1).contiguous();
  };
  Source source;
  Rows rows;
  source.lengths = lengths;
  rows.h = join(hy);
  if (lstm_) rows.c = join(cy);
  rows.sentence = at::arange(N, at::kLong);
  if (spec_.family == "rnn") {
    if (spec_.context_feed) source.context = rows.h.select(0, spec_.layers - 1).contiguous();
  } else {
    source.memory = memory.contiguous();
    source.keys = key_w_.defined() ? at::matmul(source.memory, key_w_.t()).contiguous() : source.memory;
    if (luong_ && spec_.input_feed) rows.feed = at::zeros({N, spec_.hidden}, at::kFloat);
  }
  return {source, rows};
}

at::Tensor Engine::cell(const at::Tensor& x, Rows& rows) const {
  at::Tensor input = x;
  std::vector<at::Tensor> hs, cs;
  for (size_t l = 0; l < dec_.size(); ++l) {
    const auto& p = dec_[l];
    // The gate equations of nn.LSTMCell / nn.GRUCell, in their order of operations, around
    // this engine's products (transposed float32 weights or int8).
    auto gi = apply(p.ih, input), gh = apply(p.hh, rows.h[l]);
    if (lstm_) {
      auto g = (gh + gi).chunk(4, 1);
      cs.push_back(at::sigmoid(g[1]) * rows.c[l] + at::sigmoid(g[0]) * at::tanh(g[2]));
      hs.push_back(at::sigmoid(g[3]) * at::tanh(cs.back()));
    } else {
      auto a = gi.chunk(3, 1), b = gh.chunk(3, 1);
      auto r = at::sigmoid(b[0] + a[0]), z = at::sigmoid(b[1] + a[1]);
      auto n = at::tanh(a[2] + b[2] * r);
      hs.push_back((rows.h[l] - n) * z + n);
    }
    input = hs.back();
  }
  rows.h = at::stack(hs);
  if (lstm_) rows.c = at::stack(cs);
  return input;
}

std::pair<at::Tensor, at::Tensor> Engine::step(const at::Tensor& prev, const Source& src, Rows& rows) const {
  auto emb = at::embedding(dec_embed_, prev);
  if (spec_.family == "rnn") {
    if (!spec_.context_feed) return {apply(out_, cell(emb, rows)), at::Tensor()};
    auto ctx = src.context.index_select(0, rows.sentence);
    auto top = cell(at::cat({emb, ctx}, -1), rows);
    return {apply(out_, at::cat({top, ctx}, -1)), at::Tensor()};
  }
  const std::optional<at::Tensor> v = additive_ ? std::optional<at::Tensor>(v_) : std::nullopt;
  if (!luong_) {
    auto query = apply(query_, rows.h[spec_.layers - 1]);
    auto [ctx, weights] = attention(query, src.keys, src.memory, src.lengths, rows.sentence, v);
    auto top = cell(at::cat({emb, ctx}, -1), rows);
    return {apply(out_, at::cat({top, ctx, emb}, -1)), weights};
  }
  auto top = cell(spec_.input_feed ? at::cat({emb, rows.feed}, -1) : emb, rows);
  auto query = additive_ ? apply(query_, top) : top;
  auto [ctx, weights] = attention(query, src.keys, src.memory, src.lengths, rows.sentence, v);
  auto attentional = at::tanh(apply(combine_, at::cat({ctx, top}, -1)));
  if (spec_.input_feed) rows.feed = attentional;
  return {apply(out_, attentional), weights};
}

namespace {

void keep_rows(std::vector<at::Tensor*> tensors, const at::Tensor& rows) {
  for (auto* t : tensors)
    if (t->defined()) *t = t->index_select(0, rows);
}

at::Tensor eos_rules(const std::vector<int64_t>& row_sentence, int64_t step, const std::vector<int64_t>& mins,
                     const std::vector<int64_t>& maxs) {
  auto rule = at::zeros({static_cast<int64_t>(row_sentence.size())}, at::kChar);
  auto* r = rule.data_ptr<int8_t>();
  for (size_t i = 0; i < row_sentence.size(); ++i) {
    const auto s = row_sentence[i];
    r[i] = step >= maxs[s] ? 2 : (step < mins[s] ? 1 : 0);
  }
  return rule;
}

// history (rows, steps, S) grows by this step's weights (rows, S); models without attention have none.
void append_attention(at::Tensor& history, const at::Tensor& weights) {
  if (!weights.defined()) return;
  auto w = weights.unsqueeze(1);
  history = history.defined() ? at::cat({history, w}, 1) : w;
}

std::optional<at::Tensor> trimmed(const at::Tensor& history, int64_t row, int64_t src_len) {
  if (!history.defined()) return std::nullopt;
  return history[row].narrow(-1, 0, src_len).clone();
}

}  // namespace

void Engine::reorder(Rows& rows, const at::Tensor& keep) const {
  if (rows.h.defined()) rows.h = rows.h.index_select(1, keep);
  if (rows.c.defined()) rows.c = rows.c.index_select(1, keep);
  keep_rows({&rows.feed, &rows.sentence}, keep);
}

std::vector<std::vector<Hypothesis>> Engine::translate(const std::vector<std::vector<int64_t>>& sources,
                                                       const DecodeOptions& opts) const {
  validate_options(opts);
  for (size_t i = 0; i < sources.size(); ++i) {
    check(!sources[i].empty(), "sentence " + std::to_string(i + 1) + " is empty; an empty source has no translation");
    for (auto id : sources[i])
      check(id == kUnk || (id > kEos && id < spec_.src_vocab),
            "sentence " + std::to_string(i + 1) + " holds token id " + std::to_string(id) +
                ": source ids must be 1 (<unk>) or within " + std::to_string(kEos + 1) + ".." +
                std::to_string(spec_.src_vocab - 1) + " (<pad>, <bos> and <eos> are placed by the engine)");
  }
  if (sources.empty()) return {};
  c10::InferenceMode guard;
  return opts.beam_size == 1 ? greedy(sources, opts) : beam(sources, opts);
}

std::vector<std::vector<Hypothesis>> Engine::greedy(const std::vector<std::vector<int64_t>>& sources,
                                                    const DecodeOptions& opts) const {
  const int64_t N = static_cast<int64_t>(sources.size());
  const auto [mins, maxs] = length_limits(sources, opts);
  auto [src, rows] = encode(sources);
  std::vector<int64_t> live(N);
  std::iota(live.begin(), live.end(), 0);
  auto prev = at::full({N}, kBos, at::kLong);
  auto log_prob = at::zeros({N}, at::kFloat);
  std::vector<std::vector<int64_t>> tokens(N);
  at::Tensor history;
  std::vector<std::vector<Hypothesis>> results(N);
  const std::vector<int64_t> banned = {kPad, kBos};
  for (int64_t step = 0; !live.empty(); ++step) {
    auto [logits, weights] = this->step(prev, src, rows);
    auto [best, index] = beam_candidates(logits, log_prob, eos_rules(live, step, mins, maxs), banned, kEos, 1, 1);
    if (opts.return_attention) append_attention(history, weights);
    const float* b = best.data_ptr<float>();
    const int64_t* t = index.data_ptr<int64_t>();
    std::vector<int64_t> keep, next_live, next_prev;
    std::vector<std::vector<int64_t>> next_tokens;
    for (size_t r = 0; r < live.size(); ++r) {
      if (t[r] == kEos) {
        const int64_t s = live[r];
        results[s] = {Hypothesis{tokens[r], penalized(b[r], step + 1, opts), b[r],
                                 trimmed(history, r, sources[s].size() + 1)}};
      } else {
        keep.push_back(static_cast<int64_t>(r));
        next_live.push_back(live[r]);
        next_prev.push_back(t[r]);
        next_tokens.push_back(std::move(tokens[r]));
        next_tokens.back().push_back(t[r]);
      }
    }
    if (next_live.empty()) break;
    if (keep.size() != live.size()) {
      auto k = ids_tensor(keep);
      reorder(rows, k);
      log_prob = best.view({-1}).index_select(0, k);
      if (history.defined()) history = history.index_select(0, k);
    } else {
      log_prob = best.view({-1});
    }
    live = std::move(next_live);
    tokens = std::move(next_tokens);
    prev = ids_tensor(next_prev);
  }
  return results;
}

std::vector<std::vector<Hypothesis>> Engine::beam(const std::vector<std::vector<int64_t>>& sources,
                                                  const DecodeOptions& opts) const {
  const int64_t N = static_cast<int64_t>(sources.size()), k = opts.beam_size;
  const int64_t width = std::min(2 * k, spec_.tgt_vocab * k);
  const auto [mins, maxs] = length_limits(sources, opts);
  auto [src, rows] = encode(sources);
  reorder(rows, at::arange(N, at::kLong).repeat_interleave(k));
  std::vector<int64_t> live(N);
  std::iota(live.begin(), live.end(), 0);
  auto scores = at::full({N, k}, kNegInf, at::kFloat);
  scores.select(1, 0).fill_(0.f);  // the k beams start identical: only the first one may expand
  scores = scores.view({-1});
  auto prev = at::full({N * k}, kBos, at::kLong);
  std::vector<std::vector<int64_t>> tokens(N * k);
  at::Tensor history;
  std::vector<std::vector<Hypothesis>> finished(N);
  const std::vector<int64_t> banned = {kPad, kBos};
  for (int64_t step = 0; !live.empty(); ++step) {
    std::vector<int64_t> row_sentence;
    for (auto s : live) row_sentence.insert(row_sentence.end(), k, s);
    auto [logits, weights] = this->step(prev, src, rows);
    auto [cand, index] = beam_candidates(logits, scores, eos_rules(row_sentence, step, mins, maxs), banned, kEos, k,
                                         width);
    if (opts.return_attention) append_attention(history, weights);
    const float* cs = cand.data_ptr<float>();
    const int64_t* ci = index.data_ptr<int64_t>();
    std::vector<int64_t> next_rows, next_tokens, next_live;
    std::vector<float> next_scores;
    for (size_t blk = 0; blk < live.size(); ++blk) {
      const int64_t s = live[blk];
      std::vector<std::tuple<int64_t, int64_t, float>> beams;
      for (int64_t rank = 0; rank < width; ++rank) {
        const float score = cs[blk * width + rank];
        if (score == kNegInf) break;
        const int64_t token = ci[blk * width + rank] / k, b = ci[blk * width + rank] % k;
        const int64_t row = static_cast<int64_t>(blk) * k + b;
        if (token == kEos) {
          if (rank < k)
            finished[s].push_back(Hypothesis{tokens[row], penalized(score, step + 1, opts), score,
                                             trimmed(history, row, sources[s].size() + 1)});
        } else {
          beams.emplace_back(row, token, score);
          if (static_cast<int64_t>(beams.size()) == k) break;
        }
      }
      if (beams.empty() || (opts.early_stop && static_cast<int64_t>(finished[s].size()) >= k)) continue;
      while (static_cast<int64_t>(beams.size()) < k)  // dead fillers
        beams.emplace_back(std::get<0>(beams.back()), std::get<1>(beams.back()), kNegInf);
      next_live.push_back(s);
      for (const auto& [row, token, score] : beams) {
        next_rows.push_back(row);
        next_tokens.push_back(token);
        next_scores.push_back(score);
      }
    }
    live = std::move(next_live);
    if (live.empty()) break;
    auto keep = ids_tensor(next_rows);
    reorder(rows, keep);
    if (history.defined()) history = history.index_select(0, keep);
    std::vector<std::vector<int64_t>> grown;
    grown.reserve(next_rows.size());
    for (size_t i = 0; i < next_rows.size(); ++i) {
      grown.push_back(tokens[next_rows[i]]);
      grown.back().push_back(next_tokens[i]);
    }
    tokens = std::move(grown);
    prev = ids_tensor(next_tokens);
    scores = at::tensor(at::ArrayRef<float>(next_scores), at::kFloat);
  }
  for (auto& hyps : finished) {
    std::stable_sort(hyps.begin(), hyps.end(), [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
    if (static_cast<int64_t>(hyps.size()) > opts.n_best) hyps.resize(opts.n_best);
  }
  return finished;
}

}  // namespace seq2seq
