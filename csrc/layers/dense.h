// A linear layer that owns its weights in the compute type chosen when it is built, so no
// model code branches on the compute type (CTranslate2's layers::Dense).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "../ops/ops.h"

namespace seq2seq {

enum class ComputeType { Float32, Int8, BFloat16 };

// "float32", "int8" or "bfloat16"; std::invalid_argument naming the choices otherwise.
ComputeType parse_compute_type(const std::string& name);
std::string compute_type_name(ComputeType type);

class Dense {
 public:
  Dense() = default;
  // weight (out, in) in any memory layout, bias (out) or undefined; float32. On the CPU the
  // products are this project's kernels and the libraries' (ops/cpu/linear.cpp); on another
  // device ATen's (cuBLAS on CUDA): float32, or bfloat16 inputs and outputs with float32 sums.
  Dense(const at::Tensor& weight, const at::Tensor& bias, ComputeType type);
  // x (rows, in) float32 -> (rows, out) float32: x @ weight.T + bias.
  at::Tensor operator()(const at::Tensor& x) const { return apply(x, false); }
  // max(0, x @ weight.T + bias), the ReLU fused into the product where the library can.
  at::Tensor relu(const at::Tensor& x) const { return apply(x, true); }
  bool defined() const { return out_ > 0; }
  // The kernel a product of `rows` rows takes here, by name (`seq2seq bench` prints them):
  // the one rule apply() follows.
  std::string kernel(int64_t rows) const;
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }

 private:
  enum class Kernel { Device, Panels, OneDnn, Mkl, Int8Rows, Fbgemm, Bf16Panels, Bf16OneDnn, Bf16Float32 };
  Kernel choose(int64_t rows) const;
  Kernel choose_float32(int64_t rows) const;  // Panels, OneDnn or Mkl
  static std::string kernel_name(Kernel kernel);
  at::Tensor apply(const at::Tensor& x, bool relu) const;
  // x @ wt_ + bias by a float32 kernel (Panels, OneDnn or Mkl).
  at::Tensor float32(Kernel kernel, const at::Tensor& x, const at::Tensor& bias, bool relu) const;

  ComputeType type_ = ComputeType::Float32;
  int64_t out_ = 0, in_ = 0;
  at::Tensor wt_, bias_, onednn_;  // float32 (and bfloat16 without oneDNN's bf16): (in, out) for MKL,
                                   // and oneDNN's packed layout
  at::Tensor bf16_;                // bfloat16: oneDNN's packed bf16 layout, where the CPU has it
  at::Tensor device_weight_;       // off the CPU: (out, in) in the compute type, for at::linear
  Panels panels_;                  // float32 (and bfloat16 without its own kernel): for a few rows
  Panels bf16_panels_;             // bfloat16: the same weights for a few rows (AVX2 CPUs and up)
  bool bf16_onednn_ = false;
  c10::IValue int8_;               // int8: FBGEMM's packed per-channel weights, for batches
  Int8Rows int8_rows_;             // int8: the same weights unpacked, for a few rows (AVX2)
};

using Weights = std::map<std::string, at::Tensor>;

// Hands out named tensors of the expected shape, and at the end says whether any went unused.
class WeightReader {
 public:
  WeightReader(const Weights& weights, const at::Device& device) : weights_(weights), device_(device) {}
  // A float32 tensor of this exact shape, contiguous, on the model's device.
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape);
  // A matrix (out, in) and an optional bias as a Dense in the given compute type.
  Dense dense(const std::string& weight, const std::string& bias, int64_t out, int64_t in, ComputeType type);
  bool has(const std::string& name) const { return weights_.count(name) > 0; }
  // Throws when the weights hold tensors this model never asked for.
  void check_all_used() const;
  const at::Device& device() const { return device_; }

 private:
  const Weights& weights_;
  at::Device device_;
  std::set<std::string> used_;
};

}  // namespace seq2seq
