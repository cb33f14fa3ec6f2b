#include "dense.h"

#include "../common.h"
#include "../ops/ops.h"

namespace seq2seq {

// Up to this many rows the int8 product is our own kernel, beyond it FBGEMM's
// (measured per shape: benchmarks/int8_rows.py).
constexpr int64_t kInt8FewRows = 2;
// Up to this many rows the float32 product is our own kernel, on every CPU (Dense::choose_float32).
constexpr int64_t kFloatOwnRows = 16;
// rows x in x out from which oneDNN's float32 product beats MKL's despite its cost per call.
constexpr int64_t kOneDnnMinWork = int64_t{1} << 19;
// Up to this many rows the bfloat16 product is our own kernel: a decoding step of one
// sentence or its beam, and the encoder of one source of up to 16 tokens, whose products it
// ran in 36-39 us against MKL's 49-51 on the bf16-rounded float32 weights (Tatoeba
// Transformer, 2 threads). Beyond, MKL reads a larger batch's weights once at its own speed.
constexpr int64_t kBf16OwnRows = 16;

ComputeType parse_compute_type(const std::string& name) {
  if (name == "float32") return ComputeType::Float32;
  if (name == "int8") return ComputeType::Int8;
  if (name == "bfloat16") return ComputeType::BFloat16;
  throw std::invalid_argument("compute_type must be float32, int8 or bfloat16, not " + name);
}

std::string compute_type_name(ComputeType type) {
  switch (type) {
    case ComputeType::Int8: return "int8";
    case ComputeType::BFloat16: return "bfloat16";
    default: return "float32";
  }
}

Dense::Dense(const at::Tensor& weight, const at::Tensor& bias, ComputeType type)
    : type_(type), out_(weight.size(0)), in_(weight.size(1)) {
  bias_ = bias.defined() ? bias.contiguous() : bias;
  if (!weight.device().is_cpu()) {
    check(type != ComputeType::Int8, "compute_type int8 runs on the CPU only; on " + weight.device().str() +
                                         " use float32 or bfloat16");
    device_weight_ = (type == ComputeType::BFloat16 ? weight.to(at::kBFloat16) : weight).contiguous();
    return;
  }
  switch (type) {
    case ComputeType::Int8:
      int8_ = pack_int8(weight, bias_.defined() ? std::optional<at::Tensor>(bias_) : std::nullopt);
      int8_rows_ = quantize_int8_rows(weight);
      break;
    case ComputeType::BFloat16:
      // oneDNN's bf16 needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT. Elsewhere ATen's bf16
      // product is 5-19x slower than float32 (docs/engine.md), and on Intel's CPUs MKL's
      // float32 product is faster than oneDNN's bf16 one (docs/bench.md): there the weights
      // are rounded to bfloat16 and batches multiplied in float32, bfloat16's numbers at
      // float32's speed.
      if (!mkl_is_fastest_here()) {
        try {
          bf16_ = pack_onednn(weight.to(at::kBFloat16));
        } catch (const c10::Error&) {
          bf16_ = at::Tensor();
        }
      }
      bf16_onednn_ = bf16_.defined();
      if (bf16_rows_native()) bf16_panels_ = pack_bf16_panels(weight);
      if (!bf16_onednn_) {
        wt_ = weight.to(at::kBFloat16).to(at::kFloat).t().contiguous();
        if (!bf16_panels_.defined()) panels_ = pack_float_panels(wt_.t());
        if (!mkl_is_fastest_here()) onednn_ = pack_onednn(wt_.t());
      }
      break;
    default:
      // (in, out) in memory: MKL multiplies a batch by it directly, where the (out, in) layout
      // of nn.Linear makes it copy the whole matrix into its own layout at every call (up to
      // 40% of a batched decoding step). A lone row takes the same matrix-vector path either way.
      panels_ = pack_float_panels(weight);
      if (!mkl_is_fastest_here()) onednn_ = pack_onednn(weight);
      // MKL's copy only where choose_float32 can pick MKL: without oneDNN, or for a product
      // too small for it beyond the panels' rows (at OPUS-MT's size, 0.3 GB saved).
      if (!onednn_.defined() || (kFloatOwnRows + 1) * in_ * out_ < kOneDnnMinWork) wt_ = weight.t().contiguous();
  }
}

Dense::Kernel Dense::choose(int64_t rows) const {
  if (device_weight_.defined()) return Kernel::Device;
  switch (type_) {
    case ComputeType::Int8:
      return int8_rows_.defined() && rows <= kInt8FewRows ? Kernel::Int8Rows : Kernel::Fbgemm;
    case ComputeType::BFloat16:
      // A few rows (a step of one sentence or its beam, a short source): our own kernel, the
      // same numbers without oneDNN's 30-60 us a call, more than most of these products take
      // (docs/bench.md).
      if (bf16_panels_.defined() && rows <= kBf16OwnRows) return Kernel::Bf16Panels;
      return bf16_onednn_ ? Kernel::Bf16OneDnn : Kernel::Bf16Float32;
    default:
      return choose_float32(rows);
  }
}

Dense::Kernel Dense::choose_float32(int64_t rows) const {
  // Up to 16 rows our own kernel: one row (a greedy step) at 1.16x the sentences/s of MKL's
  // matrix-vector product on Intel; a beam of 5 at 2.5x MKL's and oneDNN's on an AMD EPYC,
  // which left the engine at 0.7x CTranslate2 there (docs/bench.md).
  if (panels_.defined() && rows <= kFloatOwnRows) return Kernel::Panels;
  // oneDNN costs about 10 us a call more than MKL, which a small product does not earn back
  // (measured per layer shape: benchmarks/linear_backends.py, docs/bench.md).
  if (onednn_.defined() && rows >= 2 && rows * in_ * out_ >= kOneDnnMinWork) return Kernel::OneDnn;
  return Kernel::Mkl;
}

std::string Dense::kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::Device: return "ATen (device)";
    case Kernel::Panels: return "engine panels";
    case Kernel::OneDnn: return "oneDNN";
    case Kernel::Mkl: return "MKL";
    case Kernel::Int8Rows: return "engine int8 rows";
    case Kernel::Fbgemm: return "FBGEMM";
    case Kernel::Bf16Panels: return "engine bf16 panels";
    case Kernel::Bf16OneDnn: return "oneDNN bf16";
    default: return "float32 product of bf16 values";
  }
}

std::string Dense::kernel(int64_t rows) const {
  const Kernel chosen = choose(rows);
  if (chosen != Kernel::Bf16Float32) return kernel_name(chosen);
  return kernel_name(chosen) + " (" + kernel_name(choose_float32(rows)) + ")";
}

at::Tensor Dense::apply(const at::Tensor& x, bool relu) const {
  at::Tensor y;
  const Kernel kernel = choose(x.size(0));
  switch (kernel) {
    case Kernel::Device:
      // bfloat16 as on the CPU: bfloat16 inputs and outputs, float32 sums, the bias added in float32.
      // float32 as nn.Linear computes it, the parity reference.
      if (type_ != ComputeType::BFloat16) y = at::linear(x, device_weight_, bias_);
      else {
        y = at::linear(x.to(at::kBFloat16), device_weight_).to(at::kFloat);
        if (bias_.defined()) y.add_(bias_);
      }
      break;
    case Kernel::Int8Rows: y = linear_int8_rows(x, int8_rows_, bias_); break;
    case Kernel::Fbgemm: y = linear_int8(x, int8_); break;
    case Kernel::Bf16Panels: return linear_bf16_rows(x, bf16_panels_, bias_, relu);
    case Kernel::Bf16OneDnn:
      // bfloat16 inputs and outputs, float32 sums; the bias added in float32.
      y = linear_onednn(x.to(at::kBFloat16), bf16_, at::Tensor()).to(at::kFloat);
      if (bias_.defined()) y.add_(bias_);
      break;
    case Kernel::Bf16Float32:
      // The same numbers from float32 sums of the bf16-rounded weights: x and the sums
      // rounded in one pass each (two conversions each made a batch 7% slower than float32).
      y = float32(choose_float32(x.size(0)), round_to_bf16(x), at::Tensor(), false);
      round_to_bf16_(y, bias_, relu);
      return y;
    default:
      return float32(kernel, x, bias_, relu);
  }
  return relu ? y.relu_() : y;
}

at::Tensor Dense::float32(Kernel kernel, const at::Tensor& x, const at::Tensor& bias, bool relu) const {
  if (kernel == Kernel::Panels) return linear_float_rows(x, panels_, bias, relu);
  if (kernel == Kernel::OneDnn) return linear_onednn(x, onednn_, bias, relu);
  at::Tensor y = bias.defined() ? at::addmm(bias, x, wt_) : at::mm(x, wt_);
  return relu ? y.relu_() : y;
}

}  // namespace seq2seq

namespace seq2seq {

at::Tensor WeightReader::get(const std::string& name, const std::vector<int64_t>& shape) {
  auto it = weights_.find(name);
  check(it != weights_.end(), "missing tensor " + name + ": the weights were exported from a different model");
  const at::Tensor& t = it->second;
  check(t.scalar_type() == at::kFloat, "tensor " + name + " must be float32");
  check(t.sizes() == at::IntArrayRef(shape),
        "tensor " + name + " has shape " + shape_str(t.sizes().vec()) + ", the model needs " + shape_str(shape));
  used_.insert(name);
  return t.to(device_).contiguous();
}

Dense WeightReader::dense(const std::string& weight, const std::string& bias, int64_t out, int64_t in,
                          ComputeType type) {
  const auto w = get(weight, {out, in});
  return Dense(w, bias.empty() ? at::Tensor() : get(bias, {out}), type);
}

void WeightReader::check_all_used() const {
  for (const auto& [name, _] : weights_)
    check(used_.count(name) > 0, "the weights hold tensor " + name + ", which this model does not use: they were "
                                 "exported from a different model");
}

}  // namespace seq2seq
