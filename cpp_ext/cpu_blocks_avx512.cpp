// The block kernels for AVX-512 (16 floats a vector, 6-row tiles: 12 accumulators of 32 registers). Used only when
// the CPU reports AVX-512F at run time (cpu_blocks.cpp); elsewhere this file compiles to a stub.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define KASF_VLEN 16
#define KASF_ROWS 6
#define KASF_NS avx512
#include "cpu_blocks_kernels.h"
namespace kasf_cpu::avx512 {
bool supported() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"); }
}  // namespace kasf_cpu::avx512
#else
#include "cpu_blocks_stub.h"
KASF_CPU_KERNELS_STUB(avx512)
#endif
