// The matrix products of layers::Dense on the CPU: oneDNN (float32, bfloat16) and FBGEMM
// (int8) through PyTorch's own operators, never a hand-written GEMM.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

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


namespace {

// The engine's oneDNN product, packing the weight at every call: for tests.
at::Tensor linear_onednn_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            bool relu) {
  const auto packed = pack_onednn(weight);
  TORCH_CHECK(packed.defined(), "this torch build has no oneDNN");
  return linear_onednn(x, packed, bias.value_or(at::Tensor()), relu);
}

}  // namespace
}  // namespace seq2seq

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) { m.impl("linear_onednn", &seq2seq::linear_onednn_op); }
