// The matrix products of layers::Dense on the CPU: oneDNN (float32, bfloat16) and FBGEMM
// (int8) through PyTorch's own operators, never a hand-written GEMM. Kernels of our own cover
// the products of a few rows (a decoding step of one sentence or its beam), where the
// libraries are slowest: int8 (linear_int8_rows), where FBGEMM's set-up per call costs more
// than the arithmetic; float32 (linear_float_rows), where MKL's matrix-vector kernel takes its
// generic path on AMD CPUs and its small products copy the weights first; and bfloat16
// (linear_bf16_rows), where oneDNN's set-up costs 30-60 us a call.
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cpuid.h>

#include <array>
#include <cstring>
#include <utility>
#include <string>
#include <vector>

#include "../ops.h"
#include "vec.h"



namespace seq2seq {
namespace {

using cpu::check_float;

// PyTorch warns that quantized tensors are deprecated; here they are only the packing
// format FBGEMM takes, so the warning would tell a user nothing they can act on.
struct IgnoreWarnings : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

c10::OperatorHandle quantized_op(const char* name) {
  try {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  } catch (const c10::Error&) {
    throw std::invalid_argument(std::string("compute_type int8 needs PyTorch's ") + name +
                                " (FBGEMM), which this torch build lacks; use compute_type float32");
  }
}

std::optional<c10::OperatorHandle> onednn_op(const char* name) {
  if (!at::hasMKLDNN()) return std::nullopt;
  return c10::Dispatcher::singleton().findOp(c10::OperatorName(name, ""));
}

}  // namespace

at::Tensor pack_onednn(const at::Tensor& weight) {
  check((weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) && weight.dim() == 2,
        "weight must be a float32 or bfloat16 matrix");
  static const auto reorder = onednn_op("mkldnn::_reorder_linear_weight");
  static const bool usable = reorder && onednn_op("mkldnn::_linear_pointwise");
  if (!usable) return at::Tensor();
  torch::jit::Stack stack{weight.contiguous(), c10::IValue()};
  reorder->callBoxed(&stack);
  return stack[0].toTensor();
}

at::Tensor linear_onednn(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias, bool relu) {
  static const auto linear = onednn_op("mkldnn::_linear_pointwise");
  torch::jit::Stack stack{x.contiguous(), packed, bias.defined() ? c10::IValue(bias) : c10::IValue(),
                          std::string(relu ? "relu" : "none"), c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  linear->callBoxed(&stack);
  return stack[0].toTensor();
}

c10::IValue pack_int8(const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_float(weight, "weight", 2);
  static const auto prepack = quantized_op("quantized::linear_prepack");
  IgnoreWarnings quiet;
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  const auto w = weight.contiguous();
  const auto scales = (w.abs().amax(1) / 127.0).clamp_min(1e-12).to(at::kDouble);
  const auto q = at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
  torch::jit::Stack stack{q, bias.has_value() ? c10::IValue(bias->contiguous()) : c10::IValue()};
  prepack.callBoxed(&stack);
  return stack[0];
}

// ATen's capability, which ATEN_CPU_CAPABILITY=avx2 lowers on an AVX-512 machine: FBGEMM's
// integer sums are exact either way, so 7-bit activations there give the numbers an AVX2 CPU gives.
int64_t int8_activation_bits() {
  static const int64_t bits = at::get_cpu_capability() == "AVX512" && at::cpu::is_avx512_vnni_supported() ? 8 : 7;
  return bits;
}

at::Tensor linear_int8(const at::Tensor& x, const c10::IValue& packed) {
  static const auto dynamic = quantized_op("quantized::linear_dynamic");
  static const bool reduce_range = int8_activation_bits() == 7;
  torch::jit::Stack stack{x.contiguous(), packed, reduce_range};
  dynamic.callBoxed(&stack);
  return stack[0].toTensor();
}

#if defined(__AVX2__)
namespace {

inline int32_t lane_sum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// acc += 32 products x[k] * w[k] summed in pairs into 8 int32 lanes. maddubs multiplies
// unsigned by signed bytes, so |x| goes in unsigned and x's sign moves onto w; with both
// in -127..127 a pair sums to at most 2 * 127 * 127 < 2^15, so its 16-bit sum never saturates.
inline __m256i dot32(__m256i acc, __m256i abs_x, __m256i x, const int8_t* w) {
  const __m256i signed_w = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)), x);
  const __m256i pairs = _mm256_maddubs_epi16(abs_x, signed_w);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// sums[j] = x . w[j] for N weight rows of length n (a stride of n apart), exactly in int32.
template <int N>
inline void dot_rows(const int8_t* x, const uint8_t* abs_x, const int8_t* w, int64_t n, int32_t* sums) {
  __m256i acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k));
    const __m256i ax = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(abs_x + k));
    for (int j = 0; j < N; ++j) acc[j] = dot32(acc[j], ax, xv, w + j * n + k);
  }
  for (int j = 0; j < N; ++j) {
    int32_t sum = lane_sum(acc[j]);
    for (int64_t t = k; t < n; ++t) sum += int32_t(x[t]) * int32_t(w[j * n + t]);
    sums[j] = sum;
  }
}

}  // namespace
#endif

Int8Rows quantize_int8_rows(const at::Tensor& weight) {
#if defined(__AVX2__)
  check_float(weight, "weight", 2);
  const auto w = weight.contiguous();
  const auto scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12);  // pack_int8's scales
  const auto q = (w / scale.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar).contiguous();
  return {q, scale.contiguous()};
#else
  (void)weight;
  return {};
#endif
}

at::Tensor linear_int8_rows(const at::Tensor& x, const Int8Rows& weight, const at::Tensor& bias) {
#if defined(__AVX2__)
  check_float(x, "x", 2);
  check(weight.defined(), "linear_int8_rows needs weights from quantize_int8_rows on a CPU with AVX2");
  const int64_t rows = x.size(0), n = x.size(1), out = weight.q.size(0);
  check(weight.q.size(1) == n, "x has " + std::to_string(n) + " columns, the weights " +
                                   std::to_string(weight.q.size(1)));
  const auto xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  // Each row on its own scale: a row's result does not depend on the rows beside it.
  std::vector<int8_t> xq(rows * n);
  std::vector<uint8_t> abs_xq(rows * n);
  std::vector<float> x_scale(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = xp + r * n;
    float amax = 0.f;
    for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(row[k]));
    x_scale[r] = amax / 127.f;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t k = 0; k < n; ++k) {
      const float q = std::min(127.f, std::max(-127.f, std::nearbyint(row[k] * inv)));
      xq[r * n + k] = int8_t(q);
      abs_xq[r * n + k] = uint8_t(std::fabs(q));
    }
  }
  auto y = at::empty({rows, out}, x.options());
  float* yp = y.data_ptr<float>();
  const int8_t* wq = weight.q.data_ptr<int8_t>();
  const float* ws = weight.scale.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  constexpr int64_t kBlock = 4;  // weight rows per pass: x is loaded once for four of them
  auto outputs = [&](int64_t block_begin, int64_t block_end) {
    int32_t sums[kBlock];
    for (int64_t o = block_begin * kBlock; o < std::min(out, block_end * kBlock);) {
      const int64_t count = out - o >= kBlock ? kBlock : 1;
      for (int64_t r = 0; r < rows; ++r) {
        if (count == kBlock) dot_rows<kBlock>(&xq[r * n], &abs_xq[r * n], wq + o * n, n, sums);
        else dot_rows<1>(&xq[r * n], &abs_xq[r * n], wq + o * n, n, sums);
        for (int64_t j = 0; j < count; ++j)
          yp[r * out + o + j] = float(sums[j]) * (x_scale[r] * ws[o + j]) + (bp ? bp[o + j] : 0.f);
      }
      o += count;
    }
  };
  const int64_t blocks = (out + kBlock - 1) / kBlock, threads = at::get_num_threads();
  // Split the weight rows across the threads when there is enough to split (as Dense's float32 path).
  if (threads > 1 && rows * n * out >= (int64_t{1} << 16))
    at::parallel_for(0, blocks, (blocks + threads - 1) / threads, outputs);
  else
    outputs(0, blocks);
  return y;
#else
  (void)x, (void)bias;
  check(weight.defined(), "linear_int8_rows needs weights from quantize_int8_rows on a CPU with AVX2");
  return at::Tensor();
#endif
}

namespace {

// The products of a few rows (float32 and bfloat16) keep their weights in panels: (in, out)
// cut into groups of kPanelWidth output columns, each group's (in, kPanelWidth) block
// contiguous, the last one padded with zero columns. A thread streams its groups from memory
// in order, and sums a group's columns in registers from the first input to the last: no
// partial sums go through memory, and a weight register serves every row at once. The
// earlier layout, (in, out) swept 8 inputs at a time with the sums in memory, ran beam 5 of
// one sentence at 0.79-0.94x the speed of this one (docs/engine.md).
constexpr int64_t kPanelVectors = 4;
constexpr int64_t kPanelWidth = kPanelVectors * cpu::kLanes;

// The rows a group takes at once, and of how many registers of columns: R * P accumulators
// in registers (24 of AVX-512's 32, 12 of AVX2's 16), fewer for bfloat16, whose weights take
// two registers each once unpacked.
constexpr int64_t panel_vectors(int64_t rows, int64_t budget) {
  return rows * 4 <= budget ? 4 : (rows * 2 <= budget ? 2 : 1);
}

// fn(group_begin, group_end) over the column groups of a product, split across the threads
// when the product (rows x in x out) is large enough to pay for the split. A column is summed
// by one thread in the same order whichever: the same bits on any thread count.
template <typename F>
void split_groups(int64_t groups, int64_t work, const F& fn) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && groups > 1 && work >= (int64_t{1} << 16))
    at::parallel_for(0, groups, (groups + threads - 1) / threads, fn);
  else
    fn(0, groups);
}

// kernel(g, c0, width, bias, r0, n) over each column group g (columns [c0, c0 + width), its
// bias or null) and each run of up to `rows_at_once` rows from r0, the groups split across
// the threads: the loop of both few-rows products.
template <typename F>
void for_each_group(int64_t rows, int64_t in, int64_t out, const float* bias, int64_t rows_at_once,
                    const F& kernel) {
  const int64_t groups = (out + kPanelWidth - 1) / kPanelWidth;
  float tail_bias[kPanelWidth] = {};  // the last group's, padded with zeros
  if (bias) std::copy(bias + (groups - 1) * kPanelWidth, bias + out, tail_bias);
  split_groups(groups, rows * in * out, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c0 = g * kPanelWidth, width = std::min(kPanelWidth, out - c0);
      const float* b = bias ? (width == kPanelWidth ? bias + c0 : tail_bias) : nullptr;
      // Rows beyond the registers read the group again from the core's cache.
      for (int64_t r0 = 0; r0 < rows; r0 += rows_at_once) kernel(g, c0, width, b, r0, std::min(rows_at_once, rows - r0));
    }
  });
}

// Weights (out, in) as panels of `pair` consecutive inputs side by side per column:
// (groups, in / pair, kPanelWidth, pair), zeros where the columns or inputs run out.
at::Tensor panels_of(const at::Tensor& weight, int64_t pair) {
  const int64_t out = weight.size(0), in = weight.size(1), groups = (out + kPanelWidth - 1) / kPanelWidth;
  const int64_t in_padded = (in + pair - 1) / pair * pair;
  auto padded = at::zeros({in_padded, groups * kPanelWidth}, weight.options());
  padded.narrow(0, 0, in).narrow(1, 0, out).copy_(weight.t());
  return padded.view({in_padded / pair, pair, groups, kPanelWidth}).permute({2, 0, 3, 1}).contiguous();
}

// y (rows, out) from the sums of one group's columns [c0, c0 + width), vector v of the group.
inline void store_columns(float* y, int64_t c0, int64_t width, int64_t v, cpu::vfloat sums) {
  const int64_t j = v * cpu::kLanes, n = std::min<int64_t>(cpu::kLanes, width - j);
  if (n > 0) std::memcpy(y + c0 + j, &sums, n * sizeof(float));
}

// How far ahead of the sums the few-rows kernels ask for their weights on AVX2: 32 panel rows
// (4 KiB of float32). The hardware's own prefetcher left a pass over half of each panel row
// waiting on memory: 5 rows of a step's products took 1.7 ms on one core of an AMD EPYC
// (Zen 3) without, 1.4 ms with (benchmarks/step_products.py). Not measured with AVX-512, so
// not asked there (0).
constexpr int64_t kPrefetchRows = cpu::kLanes >= 16 ? 0 : 32;

// R rows of x times one float32 group: the sums start from the bias and add x[k] * w[k] for
// k = 0, 1, ... in order, one FMA each.
template <int R>
void float_group(const float* __restrict xp, int64_t in, const float* __restrict wg, const float* __restrict bias,
                 int64_t c0, int64_t width, float* __restrict yp, int64_t out, bool relu) {
  constexpr int64_t P = panel_vectors(R, cpu::kLanes >= 16 ? 24 : 12);
  for (int64_t s = 0; s < kPanelVectors && s * cpu::kLanes < width; s += P) {
    cpu::vfloat acc[R][P];
    for (int64_t p = 0; p < P; ++p) {
      const cpu::vfloat b = bias ? cpu::load_lanes(bias + (s + p) * cpu::kLanes) : cpu::vfloat{};
      for (int r = 0; r < R; ++r) acc[r][p] = b;
    }
    const float* w = wg + s * cpu::kLanes;
    for (int64_t k = 0; k < in; ++k, w += kPanelWidth) {
      if constexpr (kPrefetchRows > 0)
        for (int64_t line = 0; line < P * cpu::kLanes; line += 16) __builtin_prefetch(w + kPrefetchRows * kPanelWidth + line);
      cpu::vfloat wv[P];
      for (int64_t p = 0; p < P; ++p) wv[p] = cpu::load_lanes(w + p * cpu::kLanes);
      for (int r = 0; r < R; ++r) {
        const cpu::vfloat xb = cpu::broadcast_lanes(xp + r * in + k);
        for (int64_t p = 0; p < P; ++p) acc[r][p] = cpu::fma_lanes(wv[p], xb, acc[r][p]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int64_t p = 0; p < P; ++p)
        store_columns(yp + r * out, c0, width, s + p, relu ? (acc[r][p] > 0.f ? acc[r][p] : cpu::vfloat{}) : acc[r][p]);
  }
}

// AVX2 takes 6 rows at once, 12 sums in registers: 8 loads for 12 FMAs a step of k, where 12
// rows (one register of columns) took 13 loads for 12 FMAs, and its load ports were the limit.
constexpr int64_t kFloatGroupRows = cpu::kLanes >= 16 ? 24 : 6;

template <int... R>
constexpr auto float_group_kernels(std::integer_sequence<int, R...>) {
  using Group = void (*)(const float*, int64_t, const float*, const float*, int64_t, int64_t, float*, int64_t, bool);
  return std::array<Group, sizeof...(R)>{float_group<R + 1>...};
}

// Checks a product's x and bias against its `in` and `out`; the messages built only on
// failure, as these run at every decode step.
void check_rows_product(const at::Tensor& x, const Panels& weight, const at::Tensor& bias, const char* name) {
  check_float(x, "x", 2);
  if (x.size(0) < 1) check(false, std::string(name) + " needs at least one row");
  if (x.size(1) != weight.in)
    check(false, "x has " + std::to_string(x.size(1)) + " columns, the weights " + std::to_string(weight.in) + " inputs");
  if (bias.defined() && !(bias.scalar_type() == at::kFloat && bias.numel() == weight.out))
    check(false, "bias must hold " + std::to_string(weight.out) + " float32 values");
}

}  // namespace

Panels pack_float_panels(const at::Tensor& weight) {
  check_float(weight, "weight", 2);
  return {panels_of(weight, 1).view({-1, weight.size(1), kPanelWidth}), weight.size(1), weight.size(0)};
}

at::Tensor linear_float_rows(const at::Tensor& x, const Panels& weight, const at::Tensor& bias, bool relu) {
  check(weight.data.scalar_type() == at::kFloat && weight.data.dim() == 3,
        "linear_float_rows needs the weights from pack_float_panels");
  const at::Tensor& panels = weight.data;
  const int64_t in = panels.size(1), out = weight.out, rows = x.size(0);
  check_rows_product(x, weight, bias, "linear_float_rows");
  auto y = at::empty({rows, out}, x.options());
  const auto xc = x.contiguous();
  const auto bc = bias.defined() ? bias.contiguous() : bias;
  const float *xp = xc.data_ptr<float>(), *wp = panels.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  static constexpr auto kGroup = float_group_kernels(std::make_integer_sequence<int, kFloatGroupRows>{});
  for_each_group(rows, in, out, bp, kFloatGroupRows,
                 [&](int64_t g, int64_t c0, int64_t width, const float* b, int64_t r0, int64_t n) {
                   kGroup[n - 1](xp + r0 * in, in, wp + g * in * kPanelWidth, b, c0, width, yp + r0 * out, out, relu);
                 });
  return y;
}

Panels pack_bf16_panels(const at::Tensor& weight) {
  check_float(weight, "weight", 2);
  return {panels_of(weight, 2).to(at::kBFloat16), weight.size(1), weight.size(0)};
}

bool bf16_rows_native() { return cpu::kLanes >= 8; }

bool mkl_is_fastest_here() {
  // MKL takes its fast code paths on Intel's CPUs only; elsewhere oneDNN beats it on
  // products of several rows (docs/bench.md). CTranslate2 decides the same way.
  static const bool intel = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::string(vendor) == "GenuineIntel";
  }();
  return intel;
}

namespace {

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = uint32_t{v} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, as at::BFloat16 and oneDNN do (no NaN reaches here from finite weights).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

// A bfloat16 number is the top half of a float32: a pair of weights (k, k + 1) in one 32-bit
// lane gives weight k shifted up and weight k + 1 masked, two registers of float32 weights
// for kLanes outputs, whose products with bfloat16 inputs are exact in float32. So the sums
// are plain float32 FMAs: twice the rate of AVX-512 BF16's dot-product instruction on the
// CPUs measured, and any AVX2 CPU runs them (docs/engine.md).
typedef uint32_t vuint __attribute__((vector_size(SEQ2SEQ_VECTOR_BYTES)));

inline void bf16_pair_lanes(const uint16_t* w, cpu::vfloat& even, cpu::vfloat& odd) {
  vuint v;
  std::memcpy(&v, w, sizeof v);
  const vuint lo = v << 16, hi = v & 0xffff0000u;
  std::memcpy(&even, &lo, sizeof even);
  std::memcpy(&odd, &hi, sizeof odd);
}

// R rows of x (float32 values of bfloat16 numbers, 2 * half each) times one group of paired
// weights: sums from zero over the pairs in order, rounded to bfloat16, then the bias in
// float32 and the ReLU, what the batched product (oneDNN's bf16) gives.
template <int R>
void bf16_group(const float* __restrict xs, int64_t half, const uint16_t* __restrict wg, const float* __restrict bias,
                int64_t c0, int64_t width, float* __restrict yp, int64_t out, bool relu) {
  constexpr int64_t P = panel_vectors(R, cpu::kLanes >= 16 ? 16 : 8);
  for (int64_t s = 0; s < kPanelVectors && s * cpu::kLanes < width; s += P) {
    cpu::vfloat acc[R][P] = {};
    const uint16_t* w = wg + s * cpu::kLanes * 2;
    for (int64_t k = 0; k < half; ++k, w += kPanelWidth * 2) {
      if constexpr (kPrefetchRows > 0)
        for (int64_t line = 0; line < P * cpu::kLanes * 2; line += 32)
          __builtin_prefetch(w + kPrefetchRows * kPanelWidth * 2 + line);
      for (int64_t p = 0; p < P; ++p) {
        cpu::vfloat even, odd;
        bf16_pair_lanes(w + p * cpu::kLanes * 2, even, odd);
        for (int r = 0; r < R; ++r) {
          const float* x = xs + r * 2 * half + 2 * k;
          // Products of two bfloat16 numbers are exact in float32: fused or not, the same sums.
          acc[r][p] = cpu::fma_lanes(even, cpu::broadcast_lanes(x), acc[r][p]);
          acc[r][p] = cpu::fma_lanes(odd, cpu::broadcast_lanes(x + 1), acc[r][p]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int64_t p = 0; p < P; ++p) {
        cpu::vfloat v = acc[r][p];
        for (int64_t i = 0; i < cpu::kLanes; ++i) v[i] = bf16_to_float(float_to_bf16(v[i]));
        if (bias) v += cpu::load_lanes(bias + (s + p) * cpu::kLanes);
        store_columns(yp + r * out, c0, width, s + p, relu ? (v > 0.f ? v : cpu::vfloat{}) : v);
      }
  }
}

constexpr int64_t kBf16GroupRows = cpu::kLanes >= 16 ? 16 : 4;  // AVX2: 8 sums, as float32's 12

template <int... R>
constexpr auto bf16_group_kernels(std::integer_sequence<int, R...>) {
  using Group = void (*)(const float*, int64_t, const uint16_t*, const float*, int64_t, int64_t, float*, int64_t, bool);
  return std::array<Group, sizeof...(R)>{bf16_group<R + 1>...};
}

}  // namespace

at::Tensor linear_bf16_rows(const at::Tensor& x, const Panels& weight, const at::Tensor& bias, bool relu) {
  const at::Tensor& pairs = weight.data;
  check(pairs.scalar_type() == at::kBFloat16 && pairs.dim() == 4 && pairs.size(3) == 2,
        "linear_bf16_rows needs the weights from pack_bf16_panels");
  const int64_t rows = x.size(0), half = pairs.size(1), in = x.size(1), out = weight.out;
  check_rows_product(x, weight, bias, "linear_bf16_rows");
  // x rounded to bfloat16, as the batched product rounds it; a zero after an odd last column.
  std::vector<float> xs(rows * 2 * half, 0.f);
  const auto xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < in; ++k) xs[r * 2 * half + k] = bf16_to_float(float_to_bf16(xp[r * in + k]));
  auto y = at::empty({rows, out}, x.options());
  const auto* wp = reinterpret_cast<const uint16_t*>(pairs.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  const auto bc = bias.defined() ? bias.contiguous() : bias;
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  static constexpr auto kGroup = bf16_group_kernels(std::make_integer_sequence<int, kBf16GroupRows>{});
  for_each_group(rows, in, out, bp, kBf16GroupRows,
                 [&](int64_t g, int64_t c0, int64_t width, const float* b, int64_t r0, int64_t n) {
                   kGroup[n - 1](xs.data() + r0 * 2 * half, half, wp + g * half * kPanelWidth * 2, b, c0, width,
                                 yp + r0 * out, out, relu);
                 });
  return y;
}

// Both roundings split their rows across the threads: a step's output layer at beam 5 of 32
// sentences is 160 x 4000 sums, a pass over 2.5 MB that one core made a tenth of the product.
at::Tensor round_to_bf16(const at::Tensor& x) {
  check_float(x, "x", 2);
  const auto xc = x.contiguous();
  auto y = at::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t cols = xc.size(1);
  at::parallel_for(0, xc.size(0), std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * cols; i < r1 * cols; ++i) yp[i] = bf16_to_float(float_to_bf16(xp[i]));
  });
  return y;
}

void round_to_bf16_(at::Tensor& y, const at::Tensor& bias, bool relu) {
  check_float(y, "y", 2);
  check(y.is_contiguous(), "round_to_bf16_ needs a contiguous y");
  const int64_t rows = y.size(0), cols = y.size(1);
  check(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.numel() == cols && bias.is_contiguous()),
        "bias must hold " + std::to_string(cols) + " contiguous float32 values");
  float* yp = y.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = yp + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        const float v = bf16_to_float(float_to_bf16(row[c])) + (bp ? bp[c] : 0.f);
        row[c] = relu && !(v > 0.f) ? 0.f : v;
      }
    }
  });
}

namespace {

// The engine's bfloat16 product of a few rows, for tests and benchmarks: float32 weights
// (out, in) are rounded and paired at the call; bfloat16 ones come paired already.
at::Tensor linear_bf16_rows_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              bool relu) {
  return linear_bf16_rows(x, pack_bf16_panels(weight), bias.value_or(at::Tensor()), relu);
}

// The engine's float32 product of a few rows, for tests and benchmarks.
at::Tensor linear_float_rows_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               bool relu) {
  return linear_float_rows(x, pack_float_panels(weight), bias.value_or(at::Tensor()), relu);
}

// The engine's oneDNN product, packing the weight at every call: for tests.
at::Tensor linear_onednn_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            bool relu) {
  const auto packed = pack_onednn(weight);
  TORCH_CHECK(packed.defined(), "this torch build has no oneDNN");
  return linear_onednn(x, packed, bias.value_or(at::Tensor()), relu);
}

// The few-rows int8 product for tests and benchmarks: float32 weights are quantized at the
// call; int8 weights (from an earlier call's quantization) come with their scales.
at::Tensor linear_int8_rows_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& bias) {
  Int8Rows q;
  if (weight.scalar_type() == at::kChar) {
    TORCH_CHECK(scale.has_value() && scale->scalar_type() == at::kFloat && scale->numel() == weight.size(0),
                "int8 weights need their float32 scales, one per output");
    q = {weight.contiguous(), scale->contiguous()};
  } else {
    q = quantize_int8_rows(weight);
  }
  TORCH_CHECK(q.defined(), "this build has no AVX2 int8 kernel");
  return linear_int8_rows(x, q, bias.value_or(at::Tensor()));
}

}  // namespace
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("linear_onednn", &seq2seq::linear_onednn_op);
  m.impl("linear_int8_rows", &seq2seq::linear_int8_rows_op);
  m.impl("linear_float_rows", &seq2seq::linear_float_rows_op);
  m.impl("linear_bf16_rows", &seq2seq::linear_bf16_rows_op);
}
