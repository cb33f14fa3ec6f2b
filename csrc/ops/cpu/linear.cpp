// The matrix products of layers::Dense on the CPU: oneDNN (float32, bfloat16) and FBGEMM
// (int8) through PyTorch's own operators, never a hand-written GEMM. Kernels of our own cover
// the products of a few rows (a decoding step of one sentence or its beam), where the
// libraries are slowest: int8 (linear_int8_rows), where FBGEMM's set-up per call costs more
// than the arithmetic; float32 (linear_float_rows), where MKL's matrix-vector kernel takes its
// generic path on AMD CPUs and its small products copy the weights first; and bfloat16
// (linear_bf16_rows), where oneDNN's set-up costs 30-60 us a call.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cpuid.h>

#include <cstring>
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

int64_t int8_activation_bits() { return at::cpu::is_avx512_vnni_supported() ? 8 : 7; }

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

// fn(begin, end) over the output columns of a product, in blocks of a cache line, split
// across the threads when the product (rows x in x out) is large enough to pay for the split.
template <typename F>
void split_output_columns(int64_t out, int64_t work, const F& fn) {
  constexpr int64_t kBlock = 64 / sizeof(float);
  const int64_t blocks = (out + kBlock - 1) / kBlock, threads = at::get_num_threads();
  auto block_range = [&](int64_t b0, int64_t b1) { fn(b0 * kBlock, std::min(out, b1 * kBlock)); };
  if (threads > 1 && work >= (int64_t{1} << 16))
    at::parallel_for(0, blocks, (blocks + threads - 1) / threads, block_range);
  else
    block_range(0, blocks);
}

// R rows of x times wt (in, out), columns [begin, end) of y (which holds the bias or zeros):
// the weights are read row by row, K rows of `wt` per sweep over y's columns, so y stays in
// the first-level cache and the weights stream in order, each weight register loaded once
// for all R rows. Going down the columns of `wt` instead (a dot product per output) jumps a
// page per step when out >= 1024 and ran at half the speed (benchmarks/linear_backends.py).
template <int R>
void float_rows_columns(const float* xp, int64_t in, const float* wp, int64_t out, float* yp, int64_t begin,
                        int64_t end) {
  constexpr int64_t K = 8;
  for (int64_t k = 0; k < in; k += K) {
    const int64_t count = std::min(K, in - k);
    const float* w = wp + k * out;
    int64_t j = begin;
    if (count == K && R * K <= 16) {
      // x's values in registers for the whole sweep: y's stores could alias x, so the
      // compiler would otherwise load them again for every register of outputs.
      cpu::vfloat xv[R][K];
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < K; ++i) xv[r][i] = cpu::broadcast_lanes(xp + r * in + k + i);
      for (; j + cpu::kLanes <= end; j += cpu::kLanes) {
        cpu::vfloat a[R];
        for (int r = 0; r < R; ++r) a[r] = cpu::load_lanes(yp + r * out + j);
        for (int64_t i = 0; i < K; ++i) {
          const cpu::vfloat wv = cpu::load_lanes(w + i * out + j);
          for (int r = 0; r < R; ++r) a[r] = cpu::fma_lanes(wv, xv[r][i], a[r]);
        }
        for (int r = 0; r < R; ++r) std::memcpy(yp + r * out + j, &a[r], sizeof a[r]);
      }
    } else if (count == K) {
      for (; j + cpu::kLanes <= end; j += cpu::kLanes) {
        cpu::vfloat a[R];
        for (int r = 0; r < R; ++r) a[r] = cpu::load_lanes(yp + r * out + j);
        for (int64_t i = 0; i < K; ++i) {
          const cpu::vfloat wv = cpu::load_lanes(w + i * out + j);
          for (int r = 0; r < R; ++r) a[r] = cpu::fma_lanes(wv, cpu::broadcast_lanes(xp + r * in + k + i), a[r]);
        }
        for (int r = 0; r < R; ++r) std::memcpy(yp + r * out + j, &a[r], sizeof a[r]);
      }
    }
    for (; j < end; ++j)
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < count; ++i) yp[r * out + j] += w[i * out + j] * xp[r * in + k + i];
  }
}

}  // namespace

at::Tensor linear_float_rows(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, bool relu) {
  check_float(x, "x", 2);
  check_float(wt, "wt", 2);
  const int64_t rows = x.size(0), in = wt.size(0), out = wt.size(1);
  check(rows >= 1, "linear_float_rows needs at least one row");
  check(x.size(1) == in, "x has " + std::to_string(x.size(1)) + " columns, the weights " + std::to_string(in) + " rows");
  check(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.numel() == out),
        "bias must hold " + std::to_string(out) + " float32 values");
  auto y = at::empty({rows, out}, x.options());
  const auto xc = x.contiguous(), wc = wt.contiguous();
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // The sums start from the bias (one ATen call less than repeating it: this op's whole cost
  // is a few microseconds on a 256-wide layer).
  const auto bc = bias.defined() ? bias.contiguous() : bias;
  for (int64_t r = 0; r < rows; ++r) {
    if (bc.defined()) std::memcpy(yp + r * out, bc.data_ptr<float>(), out * sizeof(float));
    else std::fill(yp + r * out, yp + (r + 1) * out, 0.f);
  }
  using Columns = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t);
  static constexpr Columns kColumns[kFloatRowsAtOnce] = {float_rows_columns<1>, float_rows_columns<2>,
                                                         float_rows_columns<3>, float_rows_columns<4>,
                                                         float_rows_columns<5>, float_rows_columns<6>,
                                                         float_rows_columns<7>, float_rows_columns<8>};
  static_assert(kFloatRowsAtOnce == 8, "one instance per row count");
  // Each thread takes its columns through the rows 8 at a time, as linear_bf16_rows.
  split_output_columns(out, rows * in * out, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = 0; r0 < rows; r0 += kFloatRowsAtOnce) {
      const int64_t n = std::min(kFloatRowsAtOnce, rows - r0);
      kColumns[n - 1](xp + r0 * in, in, wp, out, yp + r0 * out, begin, end);
    }
    if (relu)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = begin; j < end; ++j) yp[r * out + j] = std::max(yp[r * out + j], 0.f);
  });
  return y;
}

at::Tensor pack_bf16_pairs(const at::Tensor& weight) {
  check_float(weight, "weight", 2);
  const int64_t out = weight.size(0), in = weight.size(1);
  // (in, out) with a zero row where `in` is odd, then rows k and k + 1 side by side per column:
  // the two bfloat16 numbers one AVX-512 BF16 dot-product lane multiplies with x[k], x[k + 1].
  auto wt = at::zeros({in + in % 2, out}, weight.options());
  wt.narrow(0, 0, in).copy_(weight.t());
  return wt.view({(in + 1) / 2, 2, out}).transpose(1, 2).contiguous().to(at::kBFloat16);
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

}  // namespace

namespace {

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

// R rows of x (float32 values of bfloat16 numbers, 2 * half each) times the paired weights,
// columns [begin, end) of y: each weight register is loaded once for all R rows. R is a
// template argument so the accumulators stay in registers.
template <int R>
void bf16_rows_columns(const float* xs, int64_t half, const uint16_t* wp, int64_t out, float* yp, int64_t begin,
                       int64_t end) {
  constexpr int64_t K = 4;  // pairs of weight rows per sweep over y, as linear_float_rows
  for (int64_t p = 0; p < half; p += K) {
    const int64_t count = std::min(K, half - p);
    int64_t j = begin;
    if (count == K) {
      for (; j + cpu::kLanes <= end; j += cpu::kLanes) {
        cpu::vfloat a[R];
        for (int r = 0; r < R; ++r) a[r] = cpu::load_lanes(yp + r * out + j);
        for (int64_t i = 0; i < K; ++i) {
          cpu::vfloat even, odd;
          bf16_pair_lanes(wp + ((p + i) * out + j) * 2, even, odd);
          for (int r = 0; r < R; ++r) {
            const float* x = xs + r * 2 * half + 2 * (p + i);
            a[r] = cpu::fma_lanes(even, cpu::broadcast_lanes(x), a[r]);
            a[r] = cpu::fma_lanes(odd, cpu::broadcast_lanes(x + 1), a[r]);
          }
        }
        for (int r = 0; r < R; ++r) std::memcpy(yp + r * out + j, &a[r], sizeof a[r]);
      }
    }
    for (; j < end; ++j)
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < count; ++i) {
          const uint16_t* w = wp + ((p + i) * out + j) * 2;
          const float* x = xs + r * 2 * half + 2 * (p + i);
          // Products of two bfloat16 numbers are exact in float32: fused or not, the same sums.
          float& y = yp[r * out + j];
          y += bf16_to_float(w[0]) * x[0];
          y += bf16_to_float(w[1]) * x[1];
        }
  }
}

// The sums rounded to bfloat16, then the bias in float32 and the ReLU: what the batched
// product (oneDNN's bf16) gives.
void bf16_round_add_bias(float* y, const float* bias, bool relu, int64_t begin, int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    const float v = bf16_to_float(float_to_bf16(y[j])) + (bias ? bias[j] : 0.f);
    y[j] = relu ? std::max(v, 0.f) : v;
  }
}

}  // namespace

at::Tensor linear_bf16_rows(const at::Tensor& x, const at::Tensor& pairs, const at::Tensor& bias, bool relu) {
  check_float(x, "x", 2);
  check(pairs.scalar_type() == at::kBFloat16 && pairs.dim() == 3 && pairs.size(2) == 2,
        "linear_bf16_rows needs the weights from pack_bf16_pairs: bfloat16 (in / 2, out, 2)");
  const int64_t rows = x.size(0);
  check(rows >= 1, "linear_bf16_rows needs at least one row");
  const int64_t half = pairs.size(0), out = pairs.size(1), in = x.size(1);
  check((in + 1) / 2 == half, "x has " + std::to_string(in) + " columns, the weights " + std::to_string(2 * half) +
                                  " input rows (in pairs)");
  check(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.numel() == out),
        "bias must hold " + std::to_string(out) + " float32 values");
  // x rounded to bfloat16, as the batched product rounds it; a zero after an odd last column.
  std::vector<float> xs(rows * 2 * half, 0.f);
  const auto xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < in; ++k) xs[r * 2 * half + k] = bf16_to_float(float_to_bf16(xp[r * in + k]));
  auto y = at::zeros({rows, out}, x.options());
  const auto wc = pairs.contiguous();
  const auto* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  const auto bc = bias.defined() ? bias.contiguous() : bias;
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  using Columns = void (*)(const float*, int64_t, const uint16_t*, int64_t, float*, int64_t, int64_t);
  static constexpr Columns kColumns[kBf16RowsAtOnce] = {bf16_rows_columns<1>, bf16_rows_columns<2>, bf16_rows_columns<3>,
                                                     bf16_rows_columns<4>, bf16_rows_columns<5>, bf16_rows_columns<6>,
                                                     bf16_rows_columns<7>, bf16_rows_columns<8>};
  static_assert(kBf16RowsAtOnce == 8, "one instance per row count");
  // Each thread takes its columns through the rows 8 at a time: its part of the weights is
  // read from memory for the first 8 rows and from its cache for the next.
  split_output_columns(out, rows * in * out, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = 0; r0 < rows; r0 += kBf16RowsAtOnce) {
      const int64_t n = std::min(kBf16RowsAtOnce, rows - r0);
      kColumns[n - 1](xs.data() + r0 * 2 * half, half, wp, out, yp + r0 * out, begin, end);
    }
    for (int64_t r = 0; r < rows; ++r) bf16_round_add_bias(yp + r * out, bp, relu, begin, end);
  });
  return y;
}

namespace {

// The engine's bfloat16 product of a few rows, for tests and benchmarks: float32 weights
// (out, in) are rounded and paired at the call; bfloat16 ones come paired already.
at::Tensor linear_bf16_rows_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              bool relu) {
  const auto pairs = weight.scalar_type() == at::kBFloat16 ? weight : pack_bf16_pairs(weight);
  return linear_bf16_rows(x, pairs, bias.value_or(at::Tensor()), relu);
}

// The engine's float32 product of a few rows, for tests and benchmarks.
at::Tensor linear_float_rows_op(const at::Tensor& x, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias,
                               bool relu) {
  return linear_float_rows(x, weight_t, bias.value_or(at::Tensor()), relu);
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
  m.impl("pack_bf16_pairs", &seq2seq::pack_bf16_pairs);
}
