// The block kernels for AVX2 + FMA (8 floats a vector, 4-row tiles: 8 accumulators of 16 registers). Used only when
// the CPU reports AVX2 and FMA at run time and lacks AVX-512 (cpu_blocks.cpp); elsewhere this file is a stub.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define KASF_VLEN 8
#define KASF_ROWS 4
#define KASF_NS avx2
#include "cpu_blocks_kernels.h"
namespace kasf_cpu::avx2 {
bool supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
}  // namespace kasf_cpu::avx2
#else
#include "cpu_blocks_stub.h"
KASF_CPU_KERNELS_STUB(avx2)
#endif
