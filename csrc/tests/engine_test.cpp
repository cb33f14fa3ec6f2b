// C++ unit tests of the engine (ctest): the kernels against ATen references, the engine's
// rules and errors on a small random model, and the export reader's errors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "../engine.h"
#include "../io/export_reader.h"
#include "../ops/ops.h"

namespace seq2seq {
namespace {

// A small Bahdanau model with a bidirectional GRU encoder, as seq2seq/models.py names it:
// config.json's "model" object.
struct Spec {
  int64_t src_vocab = 40, tgt_vocab = 30, emb_dim = 8, hidden = 16, attention_dim = 12;
};
Spec small_spec() { return {}; }

std::string small_config() {
  return R"({"family": "attention", "src_vocab": 40, "tgt_vocab": 30, "dropout": 0.0, "cell": "gru",
             "emb_dim": 8, "hidden": 16, "layers": 1, "bidirectional": true, "context_feed": false,
             "attention": "bahdanau", "attention_dim": 12, "input_feed": true, "d_model": 32, "heads": 4,
             "ff_dim": 64, "enc_layers": 1, "dec_layers": 1, "norm": "pre", "positions": "sinusoidal",
             "max_positions": 64, "tie_embeddings": false})";
}

Weights small_weights(uint64_t seed = 0) {
  at::manual_seed(seed);
  const auto s = small_spec();
  const int64_t H = s.hidden, He = H / 2, E = s.emb_dim, A = s.attention_dim;
  Weights w;
  auto r = [](std::vector<int64_t> shape, double scale = 0.3) { return at::randn(shape) * scale; };
  w["encoder.embed.weight"] = r({s.src_vocab, E});
  for (std::string sfx : {"_l0", "_l0_reverse"}) {
    w["encoder.rnn.weight_ih" + sfx] = r({3 * He, E});
    w["encoder.rnn.weight_hh" + sfx] = r({3 * He, He});
    w["encoder.rnn.bias_ih" + sfx] = r({3 * He});
    w["encoder.rnn.bias_hh" + sfx] = r({3 * He});
  }
  w["embed.weight"] = r({s.tgt_vocab, E});
  w["rnn.weight_ih_l0"] = r({3 * H, E + H});
  w["rnn.weight_hh_l0"] = r({3 * H, H});
  w["rnn.bias_ih_l0"] = r({3 * H});
  w["rnn.bias_hh_l0"] = r({3 * H});
  w["out.weight"] = r({s.tgt_vocab, 2 * H + E}, 1.5);  // peaked: real preferences between tokens
  w["out.bias"] = r({s.tgt_vocab});
  w["attn.key_proj.weight"] = r({A, H});
  w["attn.query_proj.weight"] = r({A, H});
  w["attn.query_proj.bias"] = r({A});
  w["attn.v.weight"] = r({1, A});
  return w;
}

std::vector<std::vector<int64_t>> sources() {
  return {{5, 6, 7, 8}, {9}, {10, 11, 12, 13, 14, 15, 16}, {17, 18}, {1, 20, 21}, {22, 23, 24, 25, 26}};
}

// f() must throw E with `word` in its message.
template <typename E, typename F>
void expect_error(F&& f, const std::string& word) {
  try {
    f();
    ADD_FAILURE() << "no error mentioning " << word;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

DecodeOptions options(int64_t beam) {
  DecodeOptions o;
  o.beam_size = beam;
  o.max_length_ratio = 1.5;
  o.max_length_extra = 3;
  return o;
}

TEST(Options, BadValuesAreNamed) {
  auto check = [](auto change, const std::string& word) {
    DecodeOptions o;
    change(o);
    expect_error<std::invalid_argument>([&] { validate_options(o); }, word);
  };
  check([](DecodeOptions& o) { o.beam_size = 0; }, "beam_size");
  check([](DecodeOptions& o) { o.beam_size = 100000; }, "beam_size");
  check([](DecodeOptions& o) { o.n_best = 6; }, "n_best");
  check([](DecodeOptions& o) { o.max_length = 0; }, "max_length");
  check([](DecodeOptions& o) { o.length_penalty = "wu"; }, "length_penalty");
}

TEST(Kernels, AttentionMatchesATen) {
  at::manual_seed(1);
  const int64_t N = 3, S = 7, K = 16, M = 12, R = 8;
  auto query = at::randn({R, K}), keys = at::randn({N, S, K}) * 2, memory = at::randn({N, S, M});
  auto lengths = at::tensor(std::vector<int64_t>{7, 1, 4}), sentence = at::tensor(std::vector<int64_t>{0, 0, 2, 1, 1, 2, 0, 2});
  for (bool additive : {true, false}) {
    std::optional<at::Tensor> v = additive ? std::optional<at::Tensor>(at::randn({K})) : std::nullopt;
    auto [context, weights] = attention(query, keys, memory, lengths, sentence, v);
    auto k = keys.index_select(0, sentence), m = memory.index_select(0, sentence);
    auto scores = additive ? (at::tanh(k + query.unsqueeze(1)) * *v).sum(-1) : at::bmm(k, query.unsqueeze(-1)).squeeze(-1);
    auto mask = at::arange(S).unsqueeze(0) < lengths.index_select(0, sentence).unsqueeze(1);
    auto ref_w = at::softmax(scores.masked_fill(~mask, -std::numeric_limits<float>::infinity()), -1);
    auto ref_c = at::bmm(ref_w.unsqueeze(1), m).squeeze(1);
    EXPECT_TRUE(at::allclose(weights, ref_w, 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(context, ref_c, 1e-5, 1e-5));
  }
}

TEST(Kernels, BeamCandidatesMatchSortingEveryCandidate) {
  at::manual_seed(2);
  const int64_t blocks = 3, group = 4, V = 11, count = 6;
  auto logits = at::randn({blocks * group, V});
  auto row_scores = at::randn({blocks * group});
  auto rule = at::zeros({blocks * group}, at::kChar);
  auto [cand, index] = beam_candidates(logits, row_scores, rule, {0, 2}, 3, group, count);
  auto total = at::log_softmax(logits, -1) + row_scores.unsqueeze(1);
  for (int64_t b = 0; b < blocks; ++b) {
    std::vector<std::tuple<float, int64_t>> all;  // (score, token * group + row)
    for (int64_t g = 0; g < group; ++g)
      for (int64_t t = 0; t < V; ++t)
        if (t != 0 && t != 2) all.emplace_back(total[b * group + g][t].item<float>(), t * group + g);
    std::stable_sort(all.begin(), all.end(), [](auto& x, auto& y) {
      return std::get<0>(x) > std::get<0>(y) || (std::get<0>(x) == std::get<0>(y) && std::get<1>(x) < std::get<1>(y));
    });
    for (int64_t i = 0; i < count; ++i) {
      EXPECT_NEAR(cand[b][i].item<float>(), std::get<0>(all[i]), 1e-5);
      EXPECT_EQ(index[b][i].item<int64_t>(), std::get<1>(all[i]));
    }
  }
}

TEST(Engine, SentenceAloneEqualsInsideABatch) {
  Engine engine(small_config(), small_weights());
  for (int64_t beam : {1, 4}) {
    auto together = engine.translate(sources(), options(beam));
    for (size_t i = 0; i < sources().size(); ++i) {
      auto alone = engine.translate({sources()[i]}, options(beam));
      EXPECT_EQ(alone[0][0].tokens, together[i][0].tokens) << "sentence " << i << ", beam " << beam;
      EXPECT_NEAR(alone[0][0].score, together[i][0].score, 1e-5);
    }
  }
}

TEST(Engine, NBestIsSortedAndWithinTheLengthLimits) {
  Engine engine(small_config(), small_weights());
  auto o = options(5);
  o.n_best = 5;
  o.return_attention = true;
  const auto src = sources();
  auto results = engine.translate(src, o);
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_FALSE(results[i].empty());
    const int64_t max_len = static_cast<int64_t>(1.5 * src[i].size()) + 3;
    for (size_t h = 0; h < results[i].size(); ++h) {
      const auto& hyp = results[i][h];
      EXPECT_LE(static_cast<int64_t>(hyp.tokens.size()), max_len);
      if (h) EXPECT_GE(results[i][h - 1].score, hyp.score);
      ASSERT_TRUE(hyp.attention.has_value());
      EXPECT_EQ(hyp.attention->size(0), static_cast<int64_t>(hyp.tokens.size()) + 1);
      EXPECT_TRUE(at::allclose(hyp.attention->sum(-1), at::ones({hyp.attention->size(0)}), 1e-5, 1e-5));
    }
  }
}

TEST(Engine, BadInputIsAnErrorAndTheEngineKeepsWorking) {
  Engine engine(small_config(), small_weights());
  const auto before = engine.translate(sources(), options(3));
  EXPECT_THROW(engine.translate({{5, 6}, {}}, options(3)), std::invalid_argument);
  EXPECT_THROW(engine.translate({{5, 400}}, options(3)), std::invalid_argument);
  EXPECT_THROW(engine.translate({{5, 0}}, options(3)), std::invalid_argument);  // <pad> in a source
  const auto after = engine.translate(sources(), options(3));
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i][0].tokens, after[i][0].tokens);
}

TEST(Engine, WrongWeightsAreNamed) {
  auto w = small_weights();
  w["out.weight"] = at::zeros({30, 5});
  expect_error<std::invalid_argument>([&] { Engine(small_config(), w); }, "out.weight");
  w = small_weights();
  w["extra.weight"] = at::zeros({2});
  EXPECT_THROW(Engine(small_config(), w), std::invalid_argument);
  w = small_weights();
  w.erase("attn.v.weight");
  EXPECT_THROW(Engine(small_config(), w), std::invalid_argument);
  EXPECT_THROW(Engine(small_config(), small_weights(), 0, "float16"), std::invalid_argument);
}

TEST(Engine, Int8StaysCloseToFloat32) {
  Engine f32(small_config(), small_weights()), int8(small_config(), small_weights(), 0, "int8");
  auto o = options(1);
  o.max_length = 2;  // short outputs compare the per-step numbers, not diverging paths
  auto a = f32.translate(sources(), o), b = int8.translate(sources(), o);
  int same = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i][0].tokens != b[i][0].tokens) continue;
    ++same;
    EXPECT_NEAR(a[i][0].log_prob, b[i][0].log_prob, 0.1);
  }
  EXPECT_GE(same, 5);
}

std::string temp_dir() {
  char pattern[] = "/tmp/seq2seq_test_XXXXXX";
  return mkdtemp(pattern);
}

TEST(ExportReader, MissingAndMalformedFilesAreNamed) {
  const auto dir = temp_dir();
  expect_error<std::runtime_error>([&] { load_export(dir); }, "config.json");
  std::ofstream(dir + "/config.json") << "{\"format_version\": 9, \"model\": {}}";
  expect_error<std::runtime_error>([&] { load_export(dir); }, "newer");
  std::ofstream(dir + "/config.json") << "{\"format_version\": 1,";
  expect_error<std::runtime_error>([&] { load_export(dir); }, "malformed JSON");
}

// A safetensors file: the header's length, the header, then `data`.
void write_safetensors(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << header << data;
}

TEST(ExportReader, TruncatedSafetensorsAreNamed) {
  const auto dir = temp_dir();
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  auto write = [&](size_t data_bytes, const std::string& h) {
    write_safetensors(dir + "/m.safetensors", h, std::string(data_bytes, '\0'));
  };
  write(16, header);
  auto w = read_safetensors(dir + "/m.safetensors");
  EXPECT_EQ(w.at("w").sizes(), at::IntArrayRef({2, 2}));
  write(8, header);
  expect_error<std::runtime_error>([&] { read_safetensors(dir + "/m.safetensors"); }, "truncated");
  write(16, R"({"w":{"dtype":"F16","shape":[2,4],"data_offsets":[0,16]}})");
  expect_error<std::runtime_error>([&] { read_safetensors(dir + "/m.safetensors"); }, "F32");
}

TEST(ExportReader, ShapesThatOverflowOrAreNegativeAreNamed) {
  const auto path = temp_dir() + "/m.safetensors";
  auto refused = [&](const std::string& shape, const std::string& offsets, const std::string& word) {
    write_safetensors(path, R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}",
                      std::string(16, '\0'));
    expect_error<std::runtime_error>([&] { read_safetensors(path); }, word);
  };
  refused("[4611686018427387904,4]", "[0,0]", "overflows 64 bits");  // 2^62 x 4 floats: a product that wraps to 0
  refused("[0,4611686018427387904,4611686018427387904]", "[0,0]", "overflows 64 bits");
  refused("[18446744073709551615]", "[0,16]", "overflows 64 bits");
  refused("[-1,-16]", "[0,64]", "negative dimension");
  refused("[2,2.5]", "[0,16]", "whole number");
  refused("[2,2]", "[0,-16]", "data_offsets");
  refused("[2,2]", "[16,32]", "truncated");
}

TEST(ExportReader, NonFiniteWeightsAreNamed) {
  const auto path = temp_dir() + "/m.safetensors";
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    float values[4] = {0.5f, bad, 1.0f, 2.0f};
    write_safetensors(path, R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})",
                      std::string(reinterpret_cast<const char*>(values), sizeof(values)));
    expect_error<std::runtime_error>([&] { read_safetensors(path); }, "tensor w holds NaN or infinite values");
  }
}

TEST(ExportReader, OnlyRegularFilesAreOpened) {
  // A FIFO would block the reader forever and /dev/zero never ends: both are refused unread.
  const auto dir = temp_dir();
  ASSERT_EQ(mkfifo((dir + "/m.safetensors").c_str(), 0600), 0);
  expect_error<std::runtime_error>([&] { read_safetensors(dir + "/m.safetensors"); }, "m.safetensors: is a FIFO");
  ASSERT_EQ(mkfifo((dir + "/config.json").c_str(), 0600), 0);
  expect_error<std::runtime_error>([&] { load_export(dir); }, "config.json: is a FIFO");
  expect_error<std::runtime_error>([&] { read_safetensors("/dev/zero"); }, "/dev/zero: is a device");
  expect_error<std::runtime_error>([&] { read_safetensors(dir); }, "is a directory");
}

}  // namespace
}  // namespace seq2seq
