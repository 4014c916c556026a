// Declarations of the CPU kernels of the transformer blocks (cpu_blocks_kernels.h), one set per instruction set.
//
// Layouts: token rows, row r = (b * n_frames + t) * n_joints + j, channels contiguous. A Sequence is the rows one
// attention or graph mixer works over: a frame's joints (spatial: base b*T*J + t*J, step 1, length J) or a joint's
// frames (temporal: base b*T*J + j, step J, length T). Products take W stored (K, N) row-major (the transpose of
// nn.Linear's weight) and N a multiple of the vector width; D (the feature width) a multiple of 16. The training
// attention (attention_rows_*) takes one sequence as token row pointers: q, k, v (and the output's gradient) of L
// rows each, one after the other, float32 or bf16, C channels (a multiple of 16); it writes L rows (forward) or
// dq, dk, dv (backward) through out_rows, in the same dtype. scratch: attention_rows_scratch(L, C) floats.
#pragma once

#include <stdint.h>

namespace kasf_cpu {

// y = xW+b; y = gelu(xW+b); y += scale * (xW+b); y = tanh(xW+b)
enum Epilogue { kStore = 0, kGelu = 1, kResidual = 2, kTanh = 3 };

struct Sequence {
  int64_t base;
  int64_t step;
  int length;
};

#define KASF_DECLARE_CPU_KERNELS(NS)                                                                                  \
  namespace NS {                                                                                                      \
  bool supported();                                                                                                   \
  void layer_norm_rows(const float* x, int64_t ldx, int64_t rows, int D, const float* gamma, const float* beta,       \
                       float* y, int64_t ldy);                                                                        \
  void product_rows(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const float* w,                  \
                    const float* bias, int N, float* y, int64_t ldy, const float* scale);                             \
  void attend_sequence(const float* qkv, int64_t ld, const Sequence& seq, int D, int heads, float softmax_scale,      \
                       float* out, int64_t ldo, float* scratch);                                                      \
  void graph_sequence(const float* nodes, const float* uv, const Sequence& seq, int D, const float* adjacency,       \
                      int neighbours, const float* bn_scale, const float* bn_shift, const float* layer_scale,         \
                      float* x, float* scratch);                                                                      \
  void fuse_rows(const float* const* branches, int n_branches, int64_t rows, int D, const float* weight,             \
                 const float* bias, float* out);                                                                      \
  int64_t attention_rows_scratch(int L, int C);                                                                       \
  void attention_rows_forward(const void* const* rows, bool bf16, int L, int C, int heads, float scale,              \
                              void* const* out_rows, float* scratch);                                                 \
  void attention_rows_backward(const void* const* rows, bool bf16, int L, int C, int heads, float scale,             \
                               void* const* out_rows, float* scratch);                                                \
  }

KASF_DECLARE_CPU_KERNELS(avx512)
KASF_DECLARE_CPU_KERNELS(avx2)
KASF_DECLARE_CPU_KERNELS(generic)

// bf16 products (cpu_blocks_bf16.cpp): y = epilogue(bf16(x) W + b) with float32 accumulation, on AMX tiles or with
// AVX512-BF16 dot products. W is packed by kasf.model.native_cpu.bf16_pairs: K padded with zero rows to a
// multiple of 32 (Kp), then pairs of rows interleaved, value (k, n) at [(k / 2) * 2N + 2n + k % 2] (the layout both
// AMX's B tiles and vdpbf16ps read). `scratch` holds bf16_scratch_values(K) bf16 values (the rows of x converted);
// rows any count, N a multiple of 16.
namespace bf16 {
bool amx_supported();  // the CPU has AMX-BF16 and the kernel let this process use the tile registers
bool dot_supported();  // the CPU has AVX512-BF16
int64_t bf16_scratch_values(int K);
void product_rows_amx(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w,
                      const float* bias, int N, float* y, int64_t ldy, const float* scale, uint16_t* scratch);
void product_rows_dot(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const uint16_t* w,
                      const float* bias, int N, float* y, int64_t ldy, const float* scale, uint16_t* scratch);
}  // namespace bf16

}  // namespace kasf_cpu
