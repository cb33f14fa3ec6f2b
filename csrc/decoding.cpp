#include "decoding.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <charconv>
#include <functional>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common.h"
#include "ops/ops.h"

namespace seq2seq {
namespace {

// Python's repr of a float, for messages identical to seq2seq.config's.
std::string python_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  // Python writes whole numbers below 1e16 in full ("100000.0"); to_chars' shortest form would not.
  const bool whole = std::floor(v) == v && std::fabs(v) < 1e16;
  const auto end = whole ? std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed).ptr
                         : std::to_chars(buf, buf + sizeof(buf), v).ptr;
  std::string out(buf, end);
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}

double penalized(double log_prob, int64_t length, const DecodeOptions& opts) {
  if (opts.length_penalty == "gnmt") return log_prob / std::pow((5.0 + length) / 6.0, opts.alpha);
  if (opts.length_penalty == "average") return log_prob / static_cast<double>(length);
  return log_prob;
}

// Whether searching on can no longer change a sentence's n-best list: a log-probability only
// falls as a hypothesis grows and every penalty divides it by a factor growing with the length,
// so a live beam ends at best with its log-probability penalized at the longest length it may
// reach (max_len tokens and the <eos>). Later hypotheses that tie rank after earlier ones.
bool settled(const std::vector<Hypothesis>& ended, float best_live, int64_t max_len, const DecodeOptions& opts) {
  if (static_cast<int64_t>(ended.size()) < opts.n_best) return false;
  std::vector<double> scores;
  for (const auto& h : ended) scores.push_back(h.score);
  std::nth_element(scores.begin(), scores.begin() + (opts.n_best - 1), scores.end(), std::greater<>());
  return scores[opts.n_best - 1] >= penalized(best_live, max_len + 1, opts);
}

at::Tensor ids_tensor(const std::vector<int64_t>& v, const Model& model) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).to(model.options.device());
}

// Per row: 0 free, 1 <eos> forbidden (below the minimum length), 2 only <eos> (at the maximum).
at::Tensor eos_rules(const std::vector<int64_t>& row_sentence, int64_t step, const std::vector<int64_t>& mins,
                     const std::vector<int64_t>& maxs, const Model& model) {
  std::vector<int8_t> rule(row_sentence.size());
  for (size_t i = 0; i < row_sentence.size(); ++i) {
    const auto s = row_sentence[i];
    rule[i] = step >= maxs[s] ? 2 : (step < mins[s] ? 1 : 0);
  }
  return at::tensor(at::ArrayRef<int8_t>(rule), at::kChar).to(model.options.device());
}

// history (rows, steps, ...) grows by this step's weights (rows, ...); models without attention have none.
void append_attention(at::Tensor& history, const at::Tensor& weights) {
  if (!weights.defined()) return;
  auto w = weights.unsqueeze(1);
  history = history.defined() ? at::cat({history, w}, 1) : w;
}

std::optional<at::Tensor> trimmed(const at::Tensor& history, int64_t row, int64_t src_len) {
  if (!history.defined()) return std::nullopt;
  return history[row].narrow(-1, 0, src_len).to(at::kCPU).clone();
}

const std::vector<int64_t> kBanned = {kPad, kBos};

// The tokens that would complete an n-gram `tokens` already holds: those that followed each
// earlier occurrence of its last n - 1 tokens (n = 1: every token in it). Sorted, unique.
std::vector<int64_t> repeating_tokens(const std::vector<int64_t>& tokens, int64_t n) {
  std::vector<int64_t> out;
  const int64_t len = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i + n <= len; ++i)
    if (std::equal(tokens.begin() + i, tokens.begin() + i + n - 1, tokens.end() - (n - 1))) out.push_back(tokens[i + n - 1]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Per row, the tokens no_repeat_ngram_size takes out of its candidates (none when it is 0).
// beam_candidates ranks every token; the search skips these in its ranking, which equals
// masking them after the log-softmax (decoding.py's block_repeats): removing entries from
// a sorted list keeps the order of the rest. Returns the most any group of rows loses.
int64_t repeat_bans(const std::vector<std::vector<int64_t>>& tokens, int64_t n, int64_t group,
                    std::vector<std::vector<int64_t>>& bans) {
  bans.assign(tokens.size(), {});
  if (n == 0) return 0;
  int64_t most = 0, in_group = 0;
  for (size_t r = 0; r < tokens.size(); ++r) {
    bans[r] = repeating_tokens(tokens[r], n);
    in_group = (r % group == 0 ? 0 : in_group) + static_cast<int64_t>(bans[r].size());
    most = std::max(most, in_group);
  }
  return most;
}

bool banned_for(const std::vector<std::vector<int64_t>>& bans, int64_t row, int64_t token) {
  return !bans.empty() && std::binary_search(bans[row].begin(), bans[row].end(), token);
}

}  // namespace

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

void validate_options(const DecodeOptions& o) {
  const std::string p = "DecodingOptions.";
  auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  const std::string& lp = o.length_penalty;
  if (lp != "none" && lp != "gnmt" && lp != "average") {
    const char quote = lp.find('\'') != std::string::npos && lp.find('"') == std::string::npos ? '"' : '\'';
    std::string repr(1, quote);
    for (char c : lp) repr += (c == quote || c == '\\') ? std::string("\\") + c : std::string(1, c);
    fail(p + "length_penalty=" + repr + quote + " is not valid; choose one of 'none', 'gnmt', 'average'");
  }
  if (o.beam_size < 1) fail(p + "beam_size must be >= 1, got " + std::to_string(o.beam_size));
  if (o.beam_size > kMaxBeam)
    fail(p + "beam_size must be <= " + std::to_string(kMaxBeam) + ", got " + std::to_string(o.beam_size));
  if (o.n_best < 1 || o.n_best > o.beam_size)
    fail(p + "n_best=" + std::to_string(o.n_best) + " must be between 1 and beam_size=" + std::to_string(o.beam_size));
  const std::pair<const char*, double> numbers[] = {
      {"min_length", static_cast<double>(o.min_length)}, {"min_length_ratio", o.min_length_ratio},
      {"max_length_ratio", o.max_length_ratio}, {"max_length_extra", static_cast<double>(o.max_length_extra)},
      {"alpha", o.alpha}, {"no_repeat_ngram_size", static_cast<double>(o.no_repeat_ngram_size)}};
  for (const auto& [name, value] : numbers) {
    const std::string n(name);
    const bool integer = n == "min_length" || n == "max_length_extra" || n == "no_repeat_ngram_size";
    const std::string shown = integer ? std::to_string(static_cast<int64_t>(value)) : python_float(value);
    if (value < 0) fail(p + name + " must be >= 0, got " + shown);
    if (!std::isfinite(value)) fail(p + name + " must be a finite number, got " + shown);
  }
  if (o.max_length < 1) fail(p + "max_length must be >= 1, got " + std::to_string(o.max_length));
}

Results greedy_search(const Model& model, const std::vector<std::vector<int64_t>>& sources,
                      const DecodeOptions& opts, const Abandoned& abandoned) {
  const int64_t N = static_cast<int64_t>(sources.size());
  const auto [mins, maxs] = length_limits(sources, opts);
  State state = model.encode(sources);
  std::vector<int64_t> live(N);
  std::iota(live.begin(), live.end(), 0);
  auto prev = at::full({N}, kBos, model.options.dtype(at::kLong));
  auto log_prob = at::zeros({N}, model.options);
  std::vector<std::vector<int64_t>> tokens(N);
  at::Tensor history;
  Results results(N);
  std::vector<std::vector<int64_t>> bans;
  for (int64_t step = 0; !live.empty(); ++step) {
    const Step out = model.step(step, prev, state);
    const int64_t count = std::min(1 + repeat_bans(tokens, opts.no_repeat_ngram_size, 1, bans),
                                   model.target_vocabulary);
    auto [best_t, index_t] =
        beam_candidates(out.logits, log_prob, eos_rules(live, step, mins, maxs, model), kBanned, kEos, 1, count);
    if (opts.return_attention) append_attention(history, out.attention);
    const auto best = best_t.to(at::kCPU), index = index_t.to(at::kCPU);
    std::vector<int64_t> keep, next_live, next_prev;
    std::vector<float> next_log_prob;
    std::vector<std::vector<int64_t>> next_tokens;
    for (size_t r = 0; r < live.size(); ++r) {
      const float* b = best.data_ptr<float>() + r * count;
      const int64_t* t = index.data_ptr<int64_t>() + r * count;
      int64_t j = 0;  // the best candidate that repeats no n-gram
      while (j < count && b[j] != kNegInf && banned_for(bans, r, t[j])) ++j;
      if (j == count || b[j] == kNegInf) continue;  // nothing allowed: no hypothesis, as in beam search
      if (t[j] == kEos) {
        const int64_t s = live[r];
        results[s] = {Hypothesis{tokens[r], penalized(b[j], step + 1, opts), b[j],
                                 trimmed(history, r, sources[s].size() + 1)}};
      } else if (!(abandoned && abandoned(live[r]))) {
        keep.push_back(static_cast<int64_t>(r));
        next_live.push_back(live[r]);
        next_prev.push_back(t[j]);
        next_log_prob.push_back(b[j]);
        next_tokens.push_back(std::move(tokens[r]));
        next_tokens.back().push_back(t[j]);
      }
    }
    if (next_live.empty()) break;
    at::Tensor k;
    if (keep.size() != live.size()) {  // finished sentences leave the batch
      k = ids_tensor(keep, model);
      reorder(state, k);
      if (history.defined()) history = history.index_select(0, k);
    }
    if (count > 1)  // the chosen candidates are not one column: gathered on the host
      log_prob = at::tensor(at::ArrayRef<float>(next_log_prob), at::kFloat).to(model.options.device());
    else
      log_prob = k.defined() ? best_t.view({-1}).index_select(0, k) : best_t.view({-1});
    live = std::move(next_live);
    tokens = std::move(next_tokens);
    prev = ids_tensor(next_prev, model);
  }
  return results;
}

Results beam_search(const Model& model, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                    const Abandoned& abandoned) {
  const int64_t N = static_cast<int64_t>(sources.size()), k = opts.beam_size;
  const int64_t width = std::min(2 * k, model.target_vocabulary * k);
  const auto [mins, maxs] = length_limits(sources, opts);
  State state = model.encode(sources);
  reorder(state, at::arange(N, model.options.dtype(at::kLong)).repeat_interleave(k));
  std::vector<int64_t> live(N);
  std::iota(live.begin(), live.end(), 0);
  auto scores = at::full({N, k}, kNegInf, model.options);
  scores.select(1, 0).fill_(0.f);  // the k beams start identical: only the first one may expand
  scores = scores.view({-1});
  auto prev = at::full({N * k}, kBos, model.options.dtype(at::kLong));
  std::vector<std::vector<int64_t>> tokens(N * k);
  at::Tensor history;
  Results finished(N);
  std::vector<std::vector<int64_t>> bans;
  for (int64_t step = 0; !live.empty(); ++step) {
    std::vector<int64_t> row_sentence;
    for (auto s : live) row_sentence.insert(row_sentence.end(), k, s);
    const Step out = model.step(step, prev, state);
    const int64_t count = std::min(width + repeat_bans(tokens, opts.no_repeat_ngram_size, k, bans),
                                   model.target_vocabulary * k);
    auto [cand_t, index_t] = beam_candidates(out.logits, scores, eos_rules(row_sentence, step, mins, maxs, model),
                                             kBanned, kEos, k, count);
    if (opts.return_attention) append_attention(history, out.attention);
    const auto cand = cand_t.to(at::kCPU), index = index_t.to(at::kCPU);
    const float* cs = cand.data_ptr<float>();
    const int64_t* ci = index.data_ptr<int64_t>();
    std::vector<int64_t> next_rows, next_tokens, next_live;
    std::vector<float> next_scores;
    for (size_t blk = 0; blk < live.size(); ++blk) {
      const int64_t s = live[blk];
      std::vector<std::tuple<int64_t, int64_t, float>> beams;
      // rank counts the candidates left after the n-gram bans, as decoding.py ranks them.
      for (int64_t c = 0, rank = 0; c < count && rank < width; ++c) {
        const float score = cs[blk * count + c];
        if (score == kNegInf) break;
        const int64_t token = ci[blk * count + c] / k, b = ci[blk * count + c] % k;
        const int64_t row = static_cast<int64_t>(blk) * k + b;
        if (banned_for(bans, row, token)) continue;
        const bool within_k = rank++ < k;
        if (token == kEos) {
          if (within_k)
            finished[s].push_back(Hypothesis{tokens[row], penalized(score, step + 1, opts), score,
                                             trimmed(history, row, sources[s].size() + 1)});
        } else {
          beams.emplace_back(row, token, score);
          if (static_cast<int64_t>(beams.size()) == k) break;
        }
      }
      if (beams.empty() || (opts.early_stop && static_cast<int64_t>(finished[s].size()) >= k) ||
          settled(finished[s], std::get<2>(beams.front()), maxs[s], opts))
        continue;
      if (abandoned && abandoned(s)) {
        finished[s].clear();  // nobody reads them; an empty result says the sentence was left
        continue;
      }
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
    auto keep = ids_tensor(next_rows, model);
    reorder(state, keep);
    if (history.defined()) history = history.index_select(0, keep);
    std::vector<std::vector<int64_t>> grown;
    grown.reserve(next_rows.size());
    for (size_t i = 0; i < next_rows.size(); ++i) {
      grown.push_back(tokens[next_rows[i]]);
      grown.back().push_back(next_tokens[i]);
    }
    tokens = std::move(grown);
    prev = ids_tensor(next_tokens, model);
    scores = at::tensor(at::ArrayRef<float>(next_scores), at::kFloat).to(model.options.device());
  }
  for (auto& hyps : finished) {
    std::stable_sort(hyps.begin(), hyps.end(), [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
    if (static_cast<int64_t>(hyps.size()) > opts.n_best) hyps.resize(opts.n_best);
  }
  return finished;
}

Results decode(const Model& model, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
               const Abandoned& abandoned) {
  validate_options(opts);
  const int64_t longest = model.max_source_length();
  for (size_t i = 0; i < sources.size(); ++i) {
    const std::string which = "sentence " + std::to_string(i + 1);
    check(!sources[i].empty(), which + " is empty; an empty source has no translation");
    check(longest == 0 || static_cast<int64_t>(sources[i].size()) <= longest,
          which + " has " + std::to_string(sources[i].size()) + " tokens; this model reads at most " +
              std::to_string(longest) + " (its max_positions, counting the <eos>)");
    for (auto id : sources[i])
      check(id == kUnk || (id > kEos && id < model.source_vocabulary),
            which + " holds token id " + std::to_string(id) + ": source ids must be 1 (<unk>) or within " +
                std::to_string(kEos + 1) + ".." + std::to_string(model.source_vocabulary - 1) +
                " (<pad>, <bos> and <eos> are placed by the engine)");
  }
  if (sources.empty()) return {};
  c10::InferenceMode guard;
  return opts.beam_size == 1 ? greedy_search(model, sources, opts, abandoned)
                              : beam_search(model, sources, opts, abandoned);
}

namespace {

// cache.index_select(0, rows) with the same capacity, of which only the first `used`
// positions are copied: the rest holds nothing yet.
at::Tensor gather_positions(const at::Tensor& cache, const at::Tensor& rows, int64_t used) {
  auto sizes = cache.sizes().vec();
  sizes[0] = rows.size(0);
  auto out = at::empty(sizes, cache.options());
  if (used == 0 || rows.size(0) == 0) return out;
  if (cache.is_cpu() && cache.is_contiguous() && rows.is_cpu() && rows.is_contiguous()) {
    // One copy of `used` positions per row, where index_select would copy the capacity.
    const int64_t row_bytes = cache.stride(0) * cache.element_size(), bytes = used * cache.stride(1) * cache.element_size();
    const auto* from = static_cast<const char*>(cache.data_ptr());
    auto* to = static_cast<char*>(out.data_ptr());
    const int64_t* index = rows.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows.size(0); ++i) {
      check(index[i] >= 0 && index[i] < cache.size(0), "reorder: row index out of range");
      std::memcpy(to + i * row_bytes, from + index[i] * row_bytes, bytes);
    }
  } else {
    out.narrow(1, 0, used).copy_(cache.narrow(1, 0, used).index_select(0, rows));
  }
  return out;
}

}  // namespace

void reorder(State& state, const at::Tensor& rows) {
  for (auto& [name, tensor] : state.rows)
    if (tensor.defined()) tensor = tensor.index_select(0, rows);
  for (auto& [name, cache] : state.caches)
    if (cache.defined()) cache = gather_positions(cache, rows, state.cached);
}

}  // namespace seq2seq
