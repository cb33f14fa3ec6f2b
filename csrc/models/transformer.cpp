// The Transformer of seq2seq/models.py: pre- or post-norm, sinusoidal or learned positions,
// tied or separate output embeddings, scaled or plain embeddings, any layer, head and width
// count, a ReLU, GELU or swish feed-forward.
//
// State: caches k0, v0, ... (each decoder layer's self-attention keys and values, (rows,
//        capacity, d), positions 0..step written); rows sentence;
//        sources ck0, cv0, ... (each layer's keys/values of the source, (N, S, d)), lengths, and
//        with copy ids (the source tokens the copy mechanism copies).
#include <ATen/ATen.h>

#include "../common.h"
#include "../layers/transformer.h"
#include "model.h"

namespace seq2seq {
namespace {

struct EncoderLayer {
  MultiHeadAttention attn;
  FeedForward ff;
  LayerNorm norm1, norm2;
};

struct DecoderLayer {
  MultiHeadAttention self_attn, cross_attn;
  FeedForward ff;
  LayerNorm norm0, norm1, norm2;
  std::string k, v, ck, cv;  // its names in the State
};

class TransformerModel : public Model {
 public:
  TransformerModel(const TransformerConfig& cfg, WeightReader& w, ComputeType type);
  State encode(const std::vector<std::vector<int64_t>>& sources) const override;
  Step step(int64_t step, const at::Tensor& previous, State& state) const override;
  int64_t max_source_length() const override { return cfg_.max_positions - 1; }

 private:
  // A residual sublayer: x + f(norm(x)) before normalization (pre-norm), norm(x + f(x)) after.
  template <typename F>
  at::Tensor residual(const at::Tensor& x, const LayerNorm& norm, F f) const {
    return cfg_.pre_norm ? x + f(norm(x)) : norm.add(x, f(x)).second;
  }

  TransformerConfig cfg_;
  Embeddings src_embed_, tgt_embed_;
  std::vector<EncoderLayer> enc_;
  std::vector<DecoderLayer> dec_;
  LayerNorm enc_norm_, dec_norm_;  // pre-norm only
  Dense out_, copy_gate_;
  // The step's logits from the decoder's output h and the last layer's cross-attention.
  at::Tensor logits(const at::Tensor& h, const at::Tensor& weights, const State& state) const;
};

TransformerModel::TransformerModel(const TransformerConfig& s, WeightReader& w, ComputeType type) : cfg_(s) {
  check(s.d_model > 0 && s.heads > 0 && s.d_model % s.heads == 0,
        "model.d_model must be a positive multiple of model.heads");
  check(s.ff_dim > 0 && s.enc_layers > 0 && s.dec_layers > 0 && s.max_positions > 1,
        "model.ff_dim, enc_layers, dec_layers must be positive and max_positions above 1");
  family = "transformer";
  source_vocabulary = s.src_vocab;
  target_vocabulary = s.tgt_vocab;
  const int64_t d = s.d_model;
  using Role = MultiHeadAttention::Role;
  const auto positions = s.learned_positions ? w.get("pos.weight", {s.max_positions, d})
                                             : sinusoidal_positions(s.max_positions, d).to(w.device());
  const auto src_table = w.get("src_embed.weight", {s.src_vocab, d});
  const auto tgt_table = w.get("tgt_embed.weight", {s.tgt_vocab, d});
  src_embed_ = {src_table, positions, s.scale_embeddings};
  // Both sides with one table (an imported Marian model's): one copy of it (0.1 GB at OPUS-MT's size).
  const bool shared = s.src_vocab == s.tgt_vocab && at::equal(src_table, tgt_table);
  tgt_embed_ = shared ? Embeddings(src_embed_.scaled, positions, false)
                      : Embeddings(tgt_table, positions, s.scale_embeddings);
  for (int64_t i = 0; i < s.enc_layers; ++i) {
    const std::string p = "enc." + std::to_string(i);
    // The encoder in the compute type too: in float32 it took a quarter of a bfloat16
    // decoding's time at greedy batch 1, and every type kept BLEU within 0.2 of float32.
    enc_.push_back({MultiHeadAttention(w, p + ".attn", d, s.heads, type, Role::Encoder),
                    FeedForward(w, p + ".ff", d, s.ff_dim, type, s.activation), LayerNorm(w, p + ".sub1.norm", d),
                    LayerNorm(w, p + ".sub2.norm", d)});
  }
  for (int64_t i = 0; i < s.dec_layers; ++i) {
    const std::string p = "dec." + std::to_string(i), n = std::to_string(i);
    dec_.push_back({MultiHeadAttention(w, p + ".self_attn", d, s.heads, type, Role::DecoderSelf),
                    MultiHeadAttention(w, p + ".cross_attn", d, s.heads, type, Role::DecoderCross),
                    FeedForward(w, p + ".ff", d, s.ff_dim, type, s.activation), LayerNorm(w, p + ".subs.0.norm", d),
                    LayerNorm(w, p + ".subs.1.norm", d), LayerNorm(w, p + ".subs.2.norm", d), "k" + n, "v" + n,
                    "ck" + n, "cv" + n});
  }
  if (s.pre_norm) {
    enc_norm_ = LayerNorm(w, "enc_norm", d);
    dec_norm_ = LayerNorm(w, "dec_norm", d);
  }
  // Tied embeddings are exported as two equal tensors; the output layer reads its own.
  out_ = w.dense("out.weight", "out.bias", s.tgt_vocab, d, type);
  // One output: nothing for a lower precision to gain, and p_gen weighs every token.
  if (s.copy) copy_gate_ = w.dense("copy_gate.weight", "copy_gate.bias", 1, d, ComputeType::Float32);
  w.check_all_used();
}

State TransformerModel::encode(const std::vector<std::vector<int64_t>>& sources) const {
  const int64_t N = static_cast<int64_t>(sources.size());
  const auto [host_src, host_lengths] = source_ids(sources);
  const auto src = host_src.to(options.device()), lengths = host_lengths.to(options.device());
  const int64_t S = src.size(1);
  const auto sentence = at::arange(N, options.dtype(at::kLong)).repeat_interleave(S);  // of each position's row
  auto x = src_embed_(src, 0);
  for (const auto& layer : enc_) {
    x = residual(x, layer.norm1, [&](const at::Tensor& y) { return layer.attn.sequence(y, lengths, sentence); });
    x = residual(x, layer.norm2, layer.ff);
  }
  const auto memory = cfg_.pre_norm ? enc_norm_(x) : x;
  State state;
  state.sources["lengths"] = lengths;
  if (cfg_.copy) state.sources["ids"] = src;
  state.rows["sentence"] = at::arange(N, options.dtype(at::kLong));
  const auto empty = at::empty({N, 0, cfg_.d_model}, options);
  for (const auto& layer : dec_) {
    std::tie(state.sources[layer.ck], state.sources[layer.cv]) = layer.cross_attn.source_keys_values(memory);
    state.caches[layer.k] = empty;
    state.caches[layer.v] = empty;
  }
  return state;
}

Step TransformerModel::step(int64_t step, const at::Tensor& previous, State& state) const {
  check(step < cfg_.max_positions, "sequence of " + std::to_string(step + 1) +
                                       " tokens exceeds ModelConfig.max_positions=" +
                                       std::to_string(cfg_.max_positions));
  state.cached = step + 1;  // the caches' positions 0..step, once this step has written its own
  const auto& sentence = state.rows.at("sentence");
  const auto& lengths = state.sources.at("lengths");
  auto x = tgt_embed_(previous.unsqueeze(1), step).squeeze(1);
  const auto self_lengths = at::full({x.size(0)}, step + 1, x.options().dtype(at::kLong));
  at::Tensor weights;
  auto self_attn = [&](const DecoderLayer& layer, const at::Tensor& y) {
    return layer.self_attn.step_self(y, state.caches[layer.k], state.caches[layer.v], step, self_lengths);
  };
  auto cross_attn = [&](const DecoderLayer& layer, const at::Tensor& y) {
    auto [out, w] = layer.cross_attn.step_cross(y, state.sources.at(layer.ck), state.sources.at(layer.cv), lengths,
                                                sentence);
    weights = w;
    return out;
  };
  if (!cfg_.pre_norm) {
    for (const auto& layer : dec_) {
      x = layer.norm0.add(x, self_attn(layer, x)).second;
      x = layer.norm1.add(x, cross_attn(layer, x)).second;
      x = layer.norm2.add(x, layer.ff(x)).second;
    }
    return {logits(x, weights, state), weights};
  }
  // Pre-norm: each residual sum and the next sublayer's norm in one pass; h is the normed x.
  auto h = dec_.front().norm0(x);
  for (size_t i = 0; i < dec_.size(); ++i) {
    const auto& layer = dec_[i];
    std::tie(x, h) = layer.norm1.add(x, self_attn(layer, h));
    std::tie(x, h) = layer.norm2.add(x, cross_attn(layer, h));
    std::tie(x, h) = (i + 1 < dec_.size() ? dec_[i + 1].norm0 : dec_norm_).add(x, layer.ff(h));
  }
  return {logits(h, weights, state), weights};
}

at::Tensor TransformerModel::logits(const at::Tensor& h, const at::Tensor& weights, const State& state) const {
  if (!cfg_.copy) return out_(h);
  // seq2seq/models.py Transformer.decode: the copy distribution is the heads' mean.
  return copy_mixture(out_(h), copy_gate_(h), weights.mean(1),
                      state.sources.at("ids").index_select(0, state.rows.at("sentence")));
}

}  // namespace

std::unique_ptr<Model> create_transformer(const TransformerConfig& cfg, WeightReader& weights, ComputeType type) {
  return std::make_unique<TransformerModel>(cfg, weights, type);
}

}  // namespace seq2seq
