// The RNN families of seq2seq/models.py: "rnn" (a fixed context vector, optionally fed to
// every step) and "attention" (Bahdanau's additive attention before the step, Luong's dot,
// general and concat scores after it).
//
// State: rows h0.., c0.. (LSTM), feed (Luong's input feeding), sentence;
//        sources memory, keys (the attention's source-side projection), lengths, context,
//        ids (the source tokens the copy mechanism copies).
#include <ATen/ATen.h>

#include "../common.h"
#include "../ops/ops.h"
#include "model.h"

namespace seq2seq {
namespace {

class RnnModel : public Model {
 public:
  RnnModel(const RnnConfig& cfg, WeightReader& w, ComputeType type);
  State encode(const std::vector<std::vector<int64_t>>& sources) const override;
  Step step(int64_t step, const at::Tensor& previous, State& state) const override;

 private:
  at::Tensor cell(const at::Tensor& x, TensorMap& rows) const;

  struct Layer { Dense ih, hh; };
  RnnConfig cfg_;
  bool lstm_, luong_, additive_;
  std::vector<std::string> h_names_, c_names_;
  at::Tensor enc_embed_, dec_embed_, key_w_, v_;
  Dense out_, query_, combine_, copy_gate_;
  std::vector<at::Tensor> enc_params_;  // in nn.LSTM/GRU _flat_weights order
  std::vector<Layer> dec_;
};

RnnModel::RnnModel(const RnnConfig& s, WeightReader& w, ComputeType type) : cfg_(s) {
  check(s.cell == "lstm" || s.cell == "gru", "model.cell must be lstm or gru, not " + s.cell);
  check(s.attention == "bahdanau" || s.attention == "dot" || s.attention == "general" || s.attention == "concat",
        "model.attention must be bahdanau, dot, general or concat, not " + s.attention);
  check(s.emb_dim > 0 && s.hidden > 0 && s.layers > 0, "model.emb_dim, hidden and layers must be positive");
  check(!s.bidirectional || s.hidden % 2 == 0, "a bidirectional encoder needs an even model.hidden");
  family = s.family;
  source_vocabulary = s.src_vocab;
  target_vocabulary = s.tgt_vocab;
  lstm_ = s.cell == "lstm";
  const bool attn = s.family == "attention";
  luong_ = attn && s.attention != "bahdanau";
  additive_ = attn && (s.attention == "bahdanau" || s.attention == "concat");
  const int64_t H = s.hidden, E = s.emb_dim, gates = (lstm_ ? 4 : 3);
  const int64_t dirs = s.bidirectional ? 2 : 1, He = H / dirs;

  enc_embed_ = w.get("encoder.embed.weight", {s.src_vocab, E});
  for (int64_t l = 0; l < s.layers; ++l)
    for (int64_t d = 0; d < dirs; ++d) {
      const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
      const int64_t in = l == 0 ? E : He * dirs;
      enc_params_.push_back(w.get("encoder.rnn.weight_ih" + sfx, {gates * He, in}));
      enc_params_.push_back(w.get("encoder.rnn.weight_hh" + sfx, {gates * He, He}));
      enc_params_.push_back(w.get("encoder.rnn.bias_ih" + sfx, {gates * He}));
      enc_params_.push_back(w.get("encoder.rnn.bias_hh" + sfx, {gates * He}));
    }
  dec_embed_ = w.get("embed.weight", {s.tgt_vocab, E});
  int64_t feed = 0;
  if (s.family == "rnn") feed = s.context_feed ? H : 0;
  else feed = (!luong_ || s.input_feed) ? H : 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string sfx = "_l" + std::to_string(l);
    const int64_t in = l == 0 ? E + feed : H;
    dec_.push_back({w.dense("rnn.weight_ih" + sfx, "rnn.bias_ih" + sfx, gates * H, in, type),
                    w.dense("rnn.weight_hh" + sfx, "rnn.bias_hh" + sfx, gates * H, H, type)});
    h_names_.push_back("h" + std::to_string(l));
    c_names_.push_back("c" + std::to_string(l));
  }
  int64_t out_in = H;
  if (s.family == "rnn") out_in = H + (s.context_feed ? H : 0);
  else if (!luong_) out_in = 2 * H + E;
  out_ = w.dense("out.weight", "out.bias", s.tgt_vocab, out_in, type);
  if (attn) {
    if (additive_) {
      const int64_t A = s.attention_dim;
      check(A > 0, "model.attention_dim must be positive");
      key_w_ = w.get("attn.key_proj.weight", {A, H});
      query_ = w.dense("attn.query_proj.weight", "attn.query_proj.bias", A, H, type);
      v_ = w.get("attn.v.weight", {1, A}).view({A});
    } else if (s.attention == "general") {
      key_w_ = w.get("attn.key_proj.weight", {H, H});
    }
    if (luong_) combine_ = w.dense("combine.weight", "", H, 2 * H, type);
    // One output: nothing for a lower precision to gain, and p_gen weighs every token.
    if (s.copy) copy_gate_ = w.dense("copy_gate.weight", "copy_gate.bias", 1, 2 * H + E, ComputeType::Float32);
  }
  w.check_all_used();
}

State RnnModel::encode(const std::vector<std::vector<int64_t>>& sources) const {
  const int64_t N = static_cast<int64_t>(sources.size());
  const auto [host_src, host_lengths] = source_ids(sources);
  const auto device = options.device();
  const auto src = host_src.to(device), lengths = host_lengths.to(device);
  const int64_t S = src.size(1);
  // Packed sequences, as nn.LSTM/GRU see them in the encoder: sorted longest first (the
  // lengths of a packed sequence stay on the host).
  auto sorted = host_lengths.sort(0, /*descending=*/true);
  const auto& sorted_len = std::get<0>(sorted);
  const auto order = std::get<1>(sorted).to(device);
  const auto inverse = at::empty_like(order).scatter_(0, order, at::arange(N, order.options()));
  auto packed = at::_pack_padded_sequence(at::embedding(enc_embed_, src).index_select(0, order), sorted_len, true);
  const int64_t dirs = cfg_.bidirectional ? 2 : 1, He = cfg_.hidden / dirs;
  auto h0 = at::zeros({cfg_.layers * dirs, N, He}, options);
  at::Tensor out, hy, cy;
  if (lstm_) {
    std::tie(out, hy, cy) = at::lstm(std::get<0>(packed), std::get<1>(packed), {h0, h0}, enc_params_, true,
                                     cfg_.layers, 0.0, false, cfg_.bidirectional);
  } else {
    std::tie(out, hy) = at::gru(std::get<0>(packed), std::get<1>(packed), h0, enc_params_, true, cfg_.layers, 0.0,
                                false, cfg_.bidirectional);
  }
  auto memory = std::get<0>(at::_pad_packed_sequence(out, std::get<1>(packed), true, 0.0, S)).index_select(0, inverse);
  // (layers * dirs, N, He) -> one (N, H) per layer: the directions of a layer side by side.
  auto join = [&](const at::Tensor& h, int64_t layer) {
    auto u = h.index_select(1, inverse);
    if (!cfg_.bidirectional) return u[layer].contiguous();
    return at::cat({u[2 * layer], u[2 * layer + 1]}, -1).contiguous();
  };
  State state;
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    state.rows[h_names_[l]] = join(hy, l);
    if (lstm_) state.rows[c_names_[l]] = join(cy, l);
  }
  state.rows["sentence"] = at::arange(N, options.dtype(at::kLong));
  state.sources["lengths"] = lengths;
  if (cfg_.family == "rnn") {
    if (cfg_.context_feed) state.sources["context"] = state.rows[h_names_.back()];
  } else {
    auto mem = memory.contiguous();
    state.sources["memory"] = mem;
    state.sources["keys"] = key_w_.defined() ? at::matmul(mem, key_w_.t()).contiguous() : mem;
    if (luong_ && cfg_.input_feed) state.rows["feed"] = at::zeros({N, cfg_.hidden}, options);
    if (cfg_.copy) state.sources["ids"] = src;
  }
  return state;
}

at::Tensor RnnModel::cell(const at::Tensor& x, TensorMap& rows) const {
  at::Tensor input = x;
  for (size_t l = 0; l < dec_.size(); ++l) {
    const auto& p = dec_[l];
    at::Tensor& h = rows[h_names_[l]];
    // The gate equations of nn.LSTMCell / nn.GRUCell, in their order of operations.
    auto gi = p.ih(input), gh = p.hh(h);
    if (lstm_) {
      at::Tensor& c = rows[c_names_[l]];
      auto g = (gh + gi).chunk(4, 1);
      c = at::sigmoid(g[1]) * c + at::sigmoid(g[0]) * at::tanh(g[2]);
      h = at::sigmoid(g[3]) * at::tanh(c);
    } else {
      auto a = gi.chunk(3, 1), b = gh.chunk(3, 1);
      auto r = at::sigmoid(b[0] + a[0]), z = at::sigmoid(b[1] + a[1]);
      auto n = at::tanh(a[2] + b[2] * r);
      h = (h - n) * z + n;
    }
    input = h;
  }
  return input;
}

Step RnnModel::step(int64_t, const at::Tensor& prev, State& state) const {
  auto& rows = state.rows;
  const auto& src = state.sources;
  const at::Tensor& sentence = rows.at("sentence");
  auto emb = at::embedding(dec_embed_, prev);
  if (cfg_.family == "rnn") {
    if (!cfg_.context_feed) return {out_(cell(emb, rows)), at::Tensor()};
    auto ctx = src.at("context").index_select(0, sentence);
    auto top = cell(at::cat({emb, ctx}, -1), rows);
    return {out_(at::cat({top, ctx}, -1)), at::Tensor()};
  }
  const std::optional<at::Tensor> v = additive_ ? std::optional<at::Tensor>(v_) : std::nullopt;
  const at::Tensor &keys = src.at("keys"), &memory = src.at("memory"), &lengths = src.at("lengths");
  at::Tensor top, ctx, weights, logits;
  if (!luong_) {
    auto query = query_(rows.at(h_names_.back()));
    std::tie(ctx, weights) = attention(query, keys, memory, lengths, sentence, v);
    top = cell(at::cat({emb, ctx}, -1), rows);
    logits = out_(at::cat({top, ctx, emb}, -1));
  } else {
    top = cell(cfg_.input_feed ? at::cat({emb, rows.at("feed")}, -1) : emb, rows);
    auto query = additive_ ? query_(top) : top;
    std::tie(ctx, weights) = attention(query, keys, memory, lengths, sentence, v);
    auto attentional = at::tanh(combine_(at::cat({ctx, top}, -1)));
    if (cfg_.input_feed) rows["feed"] = attentional;
    logits = out_(attentional);
  }
  if (!cfg_.copy) return {logits, weights};
  return {copy_mixture(logits, copy_gate_(at::cat({ctx, top, emb}, -1)), weights,
                       src.at("ids").index_select(0, sentence)),
          weights};
}

}  // namespace

std::unique_ptr<Model> create_rnn(const RnnConfig& cfg, WeightReader& weights, ComputeType type) {
  return std::make_unique<RnnModel>(cfg, weights, type);
}

}  // namespace seq2seq
