// Vector helpers shared by the CPU kernels: GCC/Clang vector types of KASF_VLEN floats, exp, GELU, tanh, and the
// epilogues of the matrix products. Raw arithmetic only, in an anonymous namespace inside kasf_cpu::KASF_NS: each
// translation unit that includes it compiles its own copy under its own `#pragma GCC target` (see
// cpu_blocks_kernels.h for why nothing here may be shared between instruction sets).
//
// The includer defines KASF_VLEN (floats per vector: 16, 8 or 4) and KASF_NS (the namespace that names the
// instruction set). No include guard: included once per translation unit.

#include <stdint.h>
#if KASF_VLEN >= 8
#include <immintrin.h>  // only the reciprocal estimate (always-inline intrinsics: no out-of-line copies to share)
#endif

#include "cpu_blocks_kernels_api.h"

namespace kasf_cpu {
namespace KASF_NS {
namespace {

constexpr int V = KASF_VLEN;
typedef float vf __attribute__((vector_size(KASF_VLEN * 4), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(KASF_VLEN * 4), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
// A broadcast. Spelled out: `vf{} + s` adds 0.0f first (-0.0f + 0.0f is not -0.0f, so it stays an add), and a
// per-lane loop compiles to sixteen masked inserts.
inline vf splat(float s) {
#if KASF_VLEN == 16
  return vf{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#elif KASF_VLEN == 8
  return vf{s, s, s, s, s, s, s, s};
#else
  return vf{s, s, s, s};
#endif
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Pairwise lane sum and maximum: log2(V) shuffle-and-combine steps (a lane loop or an array round trip stalls on
// store forwarding). Clang has no __builtin_shuffle; it gets the lane loops.
#if defined(__clang__)
inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < V; ++i) s += v[i];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < V; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
#else
template <int W>
inline vf rotate(vf v) {
  vi perm;
  for (int i = 0; i < V; ++i) perm[i] = (i + W) % V;
  return __builtin_shuffle(v, perm);
}
inline float hsum(vf v) {
#if KASF_VLEN == 16
  v += rotate<8>(v);
#endif
#if KASF_VLEN >= 8
  v += rotate<4>(v);
#endif
  v += rotate<2>(v);
  v += rotate<1>(v);
  return v[0];
}
inline float hmax(vf v) {
#if KASF_VLEN == 16
  v = vmax(v, rotate<8>(v));
#endif
#if KASF_VLEN >= 8
  v = vmax(v, rotate<4>(v));
#endif
  v = vmax(v, rotate<2>(v));
  v = vmax(v, rotate<1>(v));
  return v[0];
}
#endif
inline int64_t row_of(const Sequence& seq, int i) { return seq.base + i * seq.step; }

// Transposes the V x V block held in r[0..V) in place (r[c][i] becomes the old r[i][c]): log2(V) rounds of
// interleaving rows i and i + V/2 (the perfect shuffle), two-input shuffles only; V * V scalar moves otherwise.
inline void transpose(vf (&r)[V]) {
#if defined(__clang__)
  float t[V][V];
  for (int i = 0; i < V; ++i)
    for (int j = 0; j < V; ++j) t[j][i] = r[i][j];
  for (int i = 0; i < V; ++i) r[i] = load(t[i]);
#else
  vi low, high;
  for (int i = 0; i < V / 2; ++i) {
    low[2 * i] = i;
    low[2 * i + 1] = V + i;
    high[2 * i] = V / 2 + i;
    high[2 * i + 1] = V + V / 2 + i;
  }
  for (int round = 1; round < V; round *= 2) {
    vf next[V];
    for (int i = 0; i < V / 2; ++i) {
      next[2 * i] = __builtin_shuffle(r[i], r[i + V / 2], low);
      next[2 * i + 1] = __builtin_shuffle(r[i], r[i + V / 2], high);
    }
    for (int i = 0; i < V; ++i) r[i] = next[i];
  }
#endif
}

// 1 / x for x >= 1 (GELU's polynomial, tanh's 1 + exp): the hardware's approximate reciprocal and one Newton step
// (relative error ~1e-7) where there is one; a division costs ~10 cycles a vector.
inline vf reciprocal(vf x) {
#if KASF_VLEN == 16
  const vf r = (vf)_mm512_maskz_rcp14_ps(0xFFFF, (__m512)x);  // maskz: GCC 12 warns on the unmasked form
#elif KASF_VLEN == 8
  const vf r = (vf)_mm256_rcp_ps((__m256)x);
#else
  const vf r = 1.0f / x;
  return r;
#endif
#if KASF_VLEN >= 8
  return r * (2.0f - x * r);
#endif
}

// c[0] x^(N-1) + ... + c[N-1], highest power first.
template <int N>
inline vf horner(vf x, const float (&c)[N]) {
  vf p = splat(c[0]);
  for (int i = 1; i < N; ++i) p = p * x + c[i];
  return p;
}

// exp(x) for x <= 88 (Cephes' range reduction and polynomial; within 2 ulp of expf, never inf or a denormal).
inline vf vexp(vf x) {
  x = vmax(x, splat(-87.0f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  vf t = x * 1.44269504088896341f + magic;
  vf n = t - magic;
  vi e = (vi)t - (vi)magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  static constexpr float kExp[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  const vf p = horner(r, kExp) * r * r + r + 1.0f;
  return p * (vf)((e + 127) << 23);
}

// The exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)), with erf from Abramowitz & Stegun 7.1.28: for z >= 0,
// erfc(z) = 1 / (1 + a1 z + ... + a6 z^6)^16, absolute error <= 3e-7; 1 + erf(z) is 2 - erfc(z) for z >= 0 and
// erfc(-z) below, so no cancellation for negative inputs. Polynomial, powers and a reciprocal: no exp, ~20 vector
// operations, what made the MLPs' GELU the largest cost of a window otherwise.
inline vf vgelu(vf x) {
  const vf z = x * 0.70710678118654752f;
  const vf a = z < 0.0f ? -z : z;
  static constexpr float kErfc[] = {4.30638e-5f, 2.765672e-4f, 1.520143e-4f, 9.2705272e-3f,
                                    4.22820123e-2f, 7.05230784e-2f, 1.0f};  // a6 .. a1, 1
  vf p = horner(a, kErfc);
  p = p * p;
  p = p * p;
  p = p * p;
  p = p * p;
  const vf erfc = reciprocal(p);
  const vf one_plus_erf = z >= 0.0f ? 2.0f - erfc : erfc;
  return 0.5f * x * one_plus_erf;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error ~1e-7 (relative error grows only where tanh is near 0).
inline vf vtanh(vf x) {
  x = x < -9.0f ? splat(-9.0f) : x;
  x = x > 9.0f ? splat(9.0f) : x;
  return 1.0f - 2.0f * reciprocal(vexp(2.0f * x) + 1.0f);
}

// A product's epilogue on one vector of outputs (acc = x W + b): store, GELU, tanh, or the layer-scaled residual.
template <int E>
inline void finish(float* y, int c, vf acc, const float* scale) {
  if (E == kStore) {
    store(y + c, acc);
  } else if (E == kGelu) {
    store(y + c, vgelu(acc));
  } else if (E == kTanh) {
    store(y + c, vtanh(acc));
  } else {  // kResidual: y += scale * (x W + b)
    store(y + c, load(y + c) + load(scale + c) * acc);
  }
}

}  // namespace
}  // namespace KASF_NS
}  // namespace kasf_cpu
