// Vectorized helpers of the CPU kernels: vectors of one register (16 floats with AVX-512, 8
// with AVX, 4 otherwise) through GCC's vector extensions, so the row loops run a register at
// a time whatever the compiler's own vectorizer decides. Internal to the ops/cpu/ files.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "../../common.h"

namespace seq2seq {
namespace cpu {

// A rational approximation of tanh accurate to a few float ulp (the form Eigen uses); unlike
// std::tanh it has no branches, so the compiler vectorizes the loops that call it.
inline float tanh_rational(float x) {
  x = std::min(7.90531110763549805f, std::max(-7.90531110763549805f, x));
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}

// Without AVX-512 (SEQ2SEQ_ARCH=x86-64-v3 or x86-64) GCC warns that passing these by value has another ABI;
// every function taking them is internal to the ops/cpu/ files, so no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
// One register wide: a wider vector type is split into registers by GCC, which then keeps
// its parts on the stack (beam_candidates ran 4.6x slower on AVX2 with 16-float vectors).
#if defined(__AVX512F__)
#define SEQ2SEQ_VECTOR_BYTES 64
#elif defined(__AVX__)
#define SEQ2SEQ_VECTOR_BYTES 32
#else
#define SEQ2SEQ_VECTOR_BYTES 16
#endif
typedef float vfloat __attribute__((vector_size(SEQ2SEQ_VECTOR_BYTES)));
typedef int32_t vint __attribute__((vector_size(SEQ2SEQ_VECTOR_BYTES)));
constexpr int64_t kLanes = SEQ2SEQ_VECTOR_BYTES / sizeof(float);

// a * b + c rounded once where the CPU has FMA. The builds turn GCC's own fusing off
// (-ffp-contract=off) so that the other kernels round alike on every build; the one-row
// product asks for it here, where it is the arithmetic (linear_float_rows).
inline vfloat fma_lanes(vfloat a, vfloat b, vfloat c) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(a, b, c);
#elif defined(__FMA__) && defined(__AVX__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// x in every lane. Spelled `vfloat{} + x`, GCC must add the zero (-0 + 0 is +0), an extra
// instruction per use inside a loop.
inline vfloat broadcast_lanes(const float* x) {
#if defined(__AVX512F__)
  return _mm512_set1_ps(*x);
#elif defined(__AVX__)
  return _mm256_set1_ps(*x);
#else
  return _mm_set1_ps(*x);
#endif
}

// Whether any lane of a comparison's result is set: one instruction where the CPU has one,
// instead of a lane-by-lane loop (the top-k scan asks it once per register of a vocabulary).
inline bool any_lane(vint mask) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0;
#elif defined(__AVX__)
  return _mm256_movemask_ps((__m256)mask) != 0;
#else
  return _mm_movemask_ps((__m128)mask) != 0;
#endif
}

inline vfloat load_lanes(const float* x) {
  vfloat v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// exp(x) for x <= 0, within 2 float ulp of std::exp: Cephes' polynomial on x - n ln 2,
// scaled by 2^n. Below -87 (-inf included) it gives exp(-87), about 1.6e-38, where exp
// gives less: next to exp(0) = 1 in a softmax sum that is nothing, and the clamp keeps n
// where 2^n is a normal float.
inline vfloat exp_nonpositive(vfloat x) {
  const vfloat lowest = vfloat{} - 87.0f;
  x = x < lowest ? lowest : x;
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const vfloat n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vfloat r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vfloat y = p * r * r + r + 1.0f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float row_max(const float* x, int64_t V) {
  float mx = kNegInf;
  int64_t t = 0;
  if (V >= kLanes) {
    vfloat m = load_lanes(x);
    for (t = kLanes; t + kLanes <= V; t += kLanes) {
      const vfloat v = load_lanes(x + t);
      m = m < v ? v : m;
    }
    for (int j = 0; j < kLanes; ++j) mx = std::max(mx, m[j]);
  }
  for (; t < V; ++t) mx = std::max(mx, x[t]);
  return mx;
}

// log(sum exp(x - mx)). Each lane sums 16 terms in float, then joins a double sum: a float
// sum over a whole large vocabulary drifts by 1e-5.
inline float row_log_sum_exp(const float* x, int64_t V, float mx) {
  double sum = 0.0;
  int64_t t = 0;
  while (t + kLanes <= V) {
    vfloat acc = {};
    for (int64_t end = std::min(V - kLanes, t + 15 * kLanes); t <= end; t += kLanes)
      acc += exp_nonpositive(load_lanes(x + t) - mx);
    for (int j = 0; j < kLanes; ++j) sum += acc[j];
  }
  if (t < V) {
    float tail[kLanes];
    std::fill(tail, tail + kLanes, kNegInf);
    std::copy(x + t, x + V, tail);
    const vfloat e = exp_nonpositive(load_lanes(tail) - mx);
    for (int64_t j = 0; j < V - t; ++j) sum += e[j];
  }
  return static_cast<float>(std::log(sum));
}

// The sum of a[i] * b[i], a register of lanes at a time.
inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
  if (n >= kLanes) {
    vfloat acc = {};
    for (; i + kLanes <= n; i += kLanes) acc += load_lanes(a + i) * load_lanes(b + i);
    for (int j = 0; j < kLanes; ++j) sum += acc[j];
  }
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// sum of (x[i] - shift)^p for p = 1 or 2, in double, four lanes of four at a time: exact to
// float precision whatever n, without a chain of n dependent additions.
template <int Power>
inline double sum_double(const float* x, int64_t n, double shift) {
  typedef double vdouble4 __attribute__((vector_size(32)));
  typedef float vfloat4 __attribute__((vector_size(16)));
  const vdouble4 s = vdouble4{} + shift;
  vdouble4 acc[4] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int a = 0; a < 4; ++a) {
      vfloat4 f;
      std::memcpy(&f, x + i + 4 * a, sizeof f);
      const vdouble4 d = __builtin_convertvector(f, vdouble4) - s;
      acc[a] += Power == 1 ? d : d * d;
    }
  const vdouble4 all = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  double sum = (all[0] + all[1]) + (all[2] + all[3]);
  for (; i < n; ++i) {
    const double d = x[i] - shift;
    sum += Power == 1 ? d : d * d;
  }
  return sum;
}

// The messages are built only on failure: the ops check their inputs at every decode step.
inline void check_float(const at::Tensor& t, const char* name, int64_t dim) {
  if (t.scalar_type() != at::kFloat) check(false, std::string(name) + " must be float32");
  if (t.dim() != dim) check(false, std::string(name) + " must have " + std::to_string(dim) + " dimensions");
  if (!t.device().is_cpu()) check(false, std::string(name) + " must be on the CPU");
}

}  // namespace cpu
}  // namespace seq2seq
