// The block kernels with the compiler's baseline instruction set (4 floats a vector: SSE2 on x86-64, NEON on
// aarch64): correct everywhere, the fallback when neither AVX2 nor AVX-512 is there.
#if defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif
#define KASF_VLEN 4
#define KASF_ROWS 4
#define KASF_NS generic
#include "cpu_blocks_kernels.h"
namespace kasf_cpu::generic {
bool supported() { return true; }
}  // namespace kasf_cpu::generic
