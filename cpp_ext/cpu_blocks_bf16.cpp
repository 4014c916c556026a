// bf16 matrix products for the native CPU forward (kasf::lift_cpu with bf16 weights): the activations are rounded
// to bf16 (round to nearest even, like torch's .to(torch.bfloat16)), the weights were rounded once when packed, and
// every sum is accumulated in float32; the epilogues (bias, GELU, tanh, residual) run in float32 as in the fp32
// kernels. Two kernels over the same packed weights (layout in cpu_blocks_kernels_api.h):
//  - AMX: 16x32 bf16 tiles of x against 32x16 tiles of W into 16x16 float32 accumulators, a 32x32 output block
//    per step (tiles 0-3 accumulators, 4-5 x, 6-7 W).
//  - AVX512-BF16 (CPUs without AMX, e.g. AMD Zen 4): vdpbf16ps, a pair of K per instruction, register-tiled like
//    the fp32 kernel.
// Used only when the CPU reports the features at run time (and, for AMX, Linux grants the tile state); elsewhere
// this file compiles to stubs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,avx512bf16,amx-tile,amx-bf16")
#pragma GCC optimize("fp-contract=fast")
#define KASF_VLEN 16
#define KASF_NS bf16
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu_vector_math.h"

namespace kasf_cpu {
namespace bf16 {
namespace {

constexpr int kBlockRows = 32;  // rows of x converted at a time (two AMX tiles high)

int padded32(int K) { return (K + 31) / 32 * 32; }

// Rows [0, n) of x (n <= kBlockRows) as bf16 into `a` (kBlockRows x Kp, zero past K and past row n).
void convert_rows(const float* x, int64_t ldx, int n, int K, uint16_t* a) {
  const int Kp = padded32(K);
  for (int i = 0; i < kBlockRows; ++i) {
    uint16_t* dst = a + (int64_t)i * Kp;
    for (int k = 0; k < Kp; k += 16) {
      const int left = K - k;
      const __mmask16 mask = i < n ? (left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0)
                                   : 0;
      const __m512 v = _mm512_maskz_loadu_ps(mask, x + i * ldx + k);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

struct TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

template <int E>
void amx_rows(const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w, const float* bias, int N, float* y,
              int64_t ldy, const float* scale, uint16_t* a) {
  TileConfig config = {};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  const int Kp = padded32(K);
  const int64_t a_stride = (int64_t)Kp * 2, w_stride = (int64_t)N * 4;  // bytes between tile rows
  alignas(64) float c[4][16 * 16];
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int n = rows - r0 < kBlockRows ? (int)(rows - r0) : kBlockRows;
    const bool two_high = n > 16;
    convert_rows(x + r0 * ldx, ldx, n, K, a);
    for (int n0 = 0; n0 < N; n0 += 32) {
      const bool two_wide = N - n0 >= 32;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < Kp; k += 32) {
        const uint16_t* wk = w + (int64_t)(k / 2) * 2 * N + 2 * n0;
        _tile_loadd(4, a + k, a_stride);
        _tile_loadd(6, wk, w_stride);
        _tile_dpbf16ps(0, 4, 6);
        if (two_wide) {
          _tile_loadd(7, wk + 32, w_stride);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_high) {
          _tile_loadd(5, a + 16 * (int64_t)Kp + k, a_stride);
          _tile_dpbf16ps(2, 5, 6);
          if (two_wide) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c[0], 64);
      _tile_stored(1, c[1], 64);
      _tile_stored(2, c[2], 64);
      _tile_stored(3, c[3], 64);
      for (int i = 0; i < n; ++i) {
        const float* ci = c[i < 16 ? 0 : 2] + (i % 16) * 16;
        float* yi = y + (r0 + i) * ldy;
        finish<E>(yi, n0, load(ci) + load(bias + n0), scale);
        if (two_wide) finish<E>(yi, n0 + 16, load(ci + 16 * 16) + load(bias + n0 + 16), scale);
      }
    }
  }
  _tile_release();
}

// ROWS rows of converted x (bf16, row stride Kp) against W: two 16-column vectors at a time, one vdpbf16ps per
// pair of K and row.
template <int E, int ROWS>
void dot_tile(const uint16_t* a, int Kp, const uint16_t* w, const float* bias, int N, float* y, int64_t ldy,
              const float* scale) {
  int c = 0;
  for (; c + 32 <= N; c += 32) {
    __m512 acc0[ROWS], acc1[ROWS];
    for (int i = 0; i < ROWS; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int k = 0; k < Kp; k += 2) {
      const uint16_t* wk = w + (int64_t)(k / 2) * 2 * N + 2 * c;
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wk), w1 = (__m512bh)_mm512_loadu_si512(wk + 32);
      for (int i = 0; i < ROWS; ++i) {
        int32_t pair;
        __builtin_memcpy(&pair, a + (int64_t)i * Kp + k, 4);
        const __m512bh xi = (__m512bh)_mm512_set1_epi32(pair);
        acc0[i] = _mm512_dpbf16_ps(acc0[i], xi, w0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], xi, w1);
      }
    }
    for (int i = 0; i < ROWS; ++i) {
      finish<E>(y + i * ldy, c, (vf)acc0[i] + load(bias + c), scale);
      finish<E>(y + i * ldy, c + 16, (vf)acc1[i] + load(bias + c + 16), scale);
    }
  }
  for (; c < N; c += 16) {
    __m512 acc[ROWS];
    for (int i = 0; i < ROWS; ++i) acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < Kp; k += 2) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + (int64_t)(k / 2) * 2 * N + 2 * c);
      for (int i = 0; i < ROWS; ++i) {
        int32_t pair;
        __builtin_memcpy(&pair, a + (int64_t)i * Kp + k, 4);
        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32(pair), w0);
      }
    }
    for (int i = 0; i < ROWS; ++i) finish<E>(y + i * ldy, c, (vf)acc[i] + load(bias + c), scale);
  }
}

template <int E>
void dot_rows(const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w, const float* bias, int N, float* y,
              int64_t ldy, const float* scale, uint16_t* a) {
  const int Kp = padded32(K);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int n = rows - r0 < kBlockRows ? (int)(rows - r0) : kBlockRows;
    convert_rows(x + r0 * ldx, ldx, n, K, a);
    int i = 0;
    for (; i + 6 <= n; i += 6) dot_tile<E, 6>(a + (int64_t)i * Kp, Kp, w, bias, N, y + (r0 + i) * ldy, ldy, scale);
    for (; i < n; ++i) dot_tile<E, 1>(a + (int64_t)i * Kp, Kp, w, bias, N, y + (r0 + i) * ldy, ldy, scale);
  }
}

#define KASF_BY_EPILOGUE(FN, ...)                          \
  switch (epilogue) {                                      \
    case kStore: FN<kStore>(__VA_ARGS__); break;           \
    case kGelu: FN<kGelu>(__VA_ARGS__); break;             \
    case kTanh: FN<kTanh>(__VA_ARGS__); break;             \
    default: FN<kResidual>(__VA_ARGS__); break;            \
  }

// CPUID leaf 7 (sub-leaf 0 or 1): the four registers, zeros where the leaf does not exist.
struct Leaf7 {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  explicit Leaf7(unsigned sub) { __get_cpuid_count(7, sub, &eax, &ebx, &ecx, &edx); }
};

bool avx512_base() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
}

}  // namespace

int64_t bf16_scratch_values(int K) { return (int64_t)kBlockRows * padded32(K); }

// CPUID.(7,1):EAX bit 5 is AVX512-BF16.
bool dot_supported() { return avx512_base() && (Leaf7(1).eax & (1u << 5)); }

// CPUID.(7,0):EDX bits 22 (AMX-BF16) and 24 (AMX-TILE); Linux hands out the tile data state only on request
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), once for the whole process.
bool amx_supported() {
  static const bool granted = [] {
    const unsigned edx = Leaf7(0).edx;
    if (!dot_supported() || !(edx & (1u << 22)) || !(edx & (1u << 24))) return false;
#if defined(__linux__)
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

void product_rows_amx(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w,
                      const float* bias, int N, float* y, int64_t ldy, const float* scale, uint16_t* scratch) {
  KASF_BY_EPILOGUE(amx_rows, x, ldx, rows, K, w, bias, N, y, ldy, scale, scratch)
}

void product_rows_dot(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w,
                      const float* bias, int N, float* y, int64_t ldy, const float* scale, uint16_t* scratch) {
  KASF_BY_EPILOGUE(dot_rows, x, ldx, rows, K, w, bias, N, y, ldy, scale, scratch)
}

}  // namespace bf16
}  // namespace kasf_cpu
#else
#include "cpu_blocks_kernels_api.h"
namespace kasf_cpu::bf16 {
bool amx_supported() { return false; }
bool dot_supported() { return false; }
int64_t bf16_scratch_values(int) { return 0; }
void product_rows_amx(int, const float*, int64_t, int64_t, int, const uint16_t*, const float*, int, float*, int64_t,
                      const float*, uint16_t*) {}
void product_rows_dot(int, const float*, int64_t, int64_t, int, const uint16_t*, const float*, int, float*, int64_t,
                      const float*, uint16_t*) {}
}  // namespace kasf_cpu::bf16
#endif
