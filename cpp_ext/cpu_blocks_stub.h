// Stand-ins for an instruction set the compiler cannot target here (not x86-64, or not GCC/Clang): supported() is
// false, so cpu_blocks.cpp never calls the others.
#pragma once

#include "cpu_blocks_kernels_api.h"

#define KASF_CPU_KERNELS_STUB(NS)                                                                                     \
  namespace kasf_cpu::NS {                                                                                            \
  bool supported() { return false; }                                                                                  \
  void layer_norm_rows(const float*, int64_t, int64_t, int, const float*, const float*, float*, int64_t) {}          \
  void product_rows(int, const float*, int64_t, int64_t, int, const float*, const float*, int, float*, int64_t,      \
                    const float*) {}                                                                                  \
  void attend_sequence(const float*, int64_t, const Sequence&, int, int, float, float*, int64_t, float*) {}           \
  void graph_sequence(const float*, const float*, const Sequence&, int, const float*, int, const float*,             \
                      const float*, const float*, float*, float*) {}                                                  \
  void fuse_rows(const float* const*, int, int64_t, int, const float*, const float*, float*) {}                      \
  int64_t attention_rows_scratch(int, int) { return 0; }                                                              \
  void attention_rows_forward(const void* const*, bool, int, int, int, float, void* const*, float*) {}               \
  void attention_rows_backward(const void* const*, bool, int, int, int, float, void* const*, float*) {}              \
  }
