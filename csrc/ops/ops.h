// The engine's ops. attention, multi_head_attention, add_layer_norm and beam_candidates are torch ops
// (declared once in ops/ops.cpp, their input rules in ops/checks.cpp, implemented for the CPU
// in ops/cpu/ and for any other device in ATen operators, ops/reference.cpp) and these functions
// call them through the dispatcher, so a model's tensors pick the implementation of their
// device. The products of layers::Dense are plain functions over PyTorch's own operators.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <optional>
#include <tuple>

namespace seq2seq {

// While one is alive, the op functions below called on its thread run the ATen
// implementations of ops/reference.cpp (what a device without kernels of its own runs)
// instead of the device's kernels: Engine(..., ops "reference") decodes with them, so that
// tests compare the two on the CPU.
class ReferenceOps {
 public:
  explicit ReferenceOps(bool on);
  ~ReferenceOps();
  ReferenceOps(const ReferenceOps&) = delete;
  ReferenceOps& operator=(const ReferenceOps&) = delete;
  static bool active();

 private:
  bool previous_;
};

namespace reference {
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& memory,
                                             const at::Tensor& lengths, const at::Tensor& sentence,
                                             const std::optional<at::Tensor>& v);
std::tuple<at::Tensor, at::Tensor> multi_head_attention(const at::Tensor& query, const at::Tensor& keys,
                                                        const at::Tensor& values, const at::Tensor& lengths,
                                                        const std::optional<at::Tensor>& sentence, int64_t heads);
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias, double eps);
std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores,
                                                   const at::Tensor& eos_rule, at::IntArrayRef banned, int64_t eos,
                                                   int64_t group, int64_t count);
}  // namespace reference

// Fused attention of the RNN decoders for each row r over its sentence n = sentence[r]:
// scores over the first lengths[n] source positions (additive when v is given:
// v . tanh(keys[n, s] + query[r]); dot product otherwise: keys[n, s] . query[r]), the
// softmax, and the context sum_s weight[s] * memory[n, s], in one pass per row.
// query (R, K), keys (N, S, K), memory (N, S, M), lengths (N), sentence (R) int64, v (K).
// Returns context (R, M) and weights (R, S), zero past each source's length.
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& query, const at::Tensor& keys,
                                             const at::Tensor& memory, const at::Tensor& lengths,
                                             const at::Tensor& sentence, const std::optional<at::Tensor>& v);

// Multi-head scaled dot-product attention of one query per row: query (R, D) split into
// `heads` heads, against keys/values (B, T, D) of block sentence[r] (of block r when sentence
// is absent: a self-attention cache), over its first lengths[b] positions.
// Returns context (R, D), heads side by side, and weights (R, heads, T), zero past each length.
std::tuple<at::Tensor, at::Tensor> multi_head_attention(const at::Tensor& query, const at::Tensor& keys,
                                                        const at::Tensor& values, const at::Tensor& lengths,
                                                        const std::optional<at::Tensor>& sentence, int64_t heads);

// The residual sum and layer norm of a Transformer sublayer: sum = x + residual (x itself
// without one) and layer_norm(sum) over the last dimension with weight, bias and eps, as
// torch.nn.LayerNorm computes it (the moments in double). Any shape; returns (sum, normed).
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias, double eps);

// Log-softmax, constraints, adding the beam scores and the top-k, fused.
// logits (R, V) with R = blocks * group rows; row_scores (R) float; eos_rule (R) int8:
// 0 free, 1 <eos> forbidden (below the minimum length), 2 only <eos> (at the maximum).
// Tokens in `banned` are never candidates. For each block, the `count` best of
// row_scores[row] + log_softmax(logits[row])[token] over its group x V candidates, best
// first, ties to the lowest token id, then the lowest row in the group; the index of a
// candidate is token * group + row_in_group. Missing candidates are -inf with index -1.
std::tuple<at::Tensor, at::Tensor> beam_candidates(const at::Tensor& logits, const at::Tensor& row_scores,
                                                   const at::Tensor& eos_rule, at::IntArrayRef banned,
                                                   int64_t eos, int64_t group, int64_t count);

// float32 or bfloat16 weights (out, in) packed for oneDNN's matrix multiplication
// (mkldnn::_reorder_linear_weight), or an undefined tensor where this torch build has no
// oneDNN. Products of a few rows or more run two to four times faster through it than
// through MKL's sgemm on CPUs where MKL takes its AVX2 path (AMD's).
at::Tensor pack_onednn(const at::Tensor& weight);

// x @ weight.T + bias (bias may be undefined) with weights from pack_onednn, in their dtype;
// with relu, max(0, .) applied by oneDNN as the product is written.
at::Tensor linear_onednn(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias, bool relu = false);

// int8 weights for compute_type "int8": each output channel (row) of `weight` quantized
// symmetrically to -127..127 with its own scale (max |w| / 127), packed for
// quantized::linear_dynamic (FBGEMM, which uses the CPU's int8 dot-product instructions).
c10::IValue pack_int8(const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// x @ dequantized(weight).T + bias, with x quantized per call to 8 bits (7 bits where the
// CPU lacks VNNI: FBGEMM's AVX2 path would otherwise saturate its 16-bit sums).
at::Tensor linear_int8(const at::Tensor& x, const c10::IValue& packed);

// The bits linear_int8 gives each activation on this CPU: 8, or 7 without VNNI (or where
// ATEN_CPU_CAPABILITY caps ATen below AVX-512).
int64_t int8_activation_bits();

// The same per-channel int8 weights as pack_int8, unpacked: q (out, in) int8 and scale (out)
// float32, for linear_int8_rows. Undefined tensors where the build lacks AVX2.
struct Int8Rows {
  at::Tensor q, scale;
  bool defined() const { return q.defined(); }
};
Int8Rows quantize_int8_rows(const at::Tensor& weight);

// x @ dequantized(weight).T + bias for a few rows: each row of x quantized on its own,
// symmetrically to -127..127, and multiplied with AVX2's 8-bit products (exact 32-bit sums).
// FBGEMM's per-call set-up costs 15-20 us a product, more than a decoding step of one
// sentence spends in most of its products; it stays for batches (linear_int8).
at::Tensor linear_int8_rows(const at::Tensor& x, const Int8Rows& weight, const at::Tensor& bias);

// The weights of the products of a few rows, packed once when a layer is built: `in` x `out`
// weights in panels of consecutive output columns (ops/cpu/linear.cpp says why).
struct Panels {
  at::Tensor data;
  int64_t in = 0, out = 0;
  bool defined() const { return data.defined(); }
};

// float32 weights (out, in), nn.Linear's layout, as panels for linear_float_rows.
Panels pack_float_panels(const at::Tensor& weight);

// x (rows, in) @ weight.T + bias, then max(0, .) with relu: the float32 product of a few rows
// (a decoding step of one sentence or its beam, a short source). MKL's matrix-vector kernel
// takes its generic path on AMD CPUs, and its product of a few rows copies the weights first.
at::Tensor linear_float_rows(const at::Tensor& x, const Panels& weight, const at::Tensor& bias, bool relu = false);

// float32 weights (out, in) rounded to bfloat16, as panels for linear_bf16_rows: input rows
// k and k + 1 side by side per output.
Panels pack_bf16_panels(const at::Tensor& weight);

// Whether linear_bf16_rows runs a register of 8 or more floats at a time here (AVX2 or
// AVX-512 builds); elsewhere it is correct but slower than a float32 product.
bool bf16_rows_native();

// Whether MKL's float32 products of several rows beat oneDNN's on this CPU (an Intel one),
// so that Dense sends them to MKL and packs no oneDNN copy of the weights.
bool mkl_is_fastest_here();

// x (rows, in) @ weight.T + bias with x and the weights in bfloat16, float32 sums rounded to
// bfloat16, the bias added in float32, then max(0, .) with relu: the numbers of the batched
// bfloat16 product (oneDNN's), for the few rows of a decoding step of one sentence or its
// beam, or of one short source. oneDNN's bf16 product costs
// 30-60 us a call whatever its size, more than reading the weights of most layers.
at::Tensor linear_bf16_rows(const at::Tensor& x, const Panels& weight, const at::Tensor& bias, bool relu = false);
// x (float32) rounded to bfloat16 values, kept in float32: a new tensor, in one pass.
at::Tensor round_to_bf16(const at::Tensor& x);
// y (float32, contiguous) rounded to bfloat16 values in place, then the bias (float32, or
// undefined) added and the ReLU applied: the end of a bfloat16 product summed in float32.
void round_to_bf16_(at::Tensor& y, const at::Tensor& bias, bool relu);

}  // namespace seq2seq
