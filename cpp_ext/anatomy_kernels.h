// Per-frame math of KASportsFormer's Bone Extractor, shared by the CPU kernel, the CUDA kernel and the TensorRT
// plugin so that all three compute the same numbers in the same order.
//
// One frame holds 17 joints with C >= 2 channels (x, y, and optionally confidence, which is ignored). The output
// holds 17 rows [dir_x, dir_y, length]: 16 bones (vector = joint[proximal] - joint[distal]) and their mean.
// A bone of exactly zero length is given length 1, in the division and in the length feature alike, as the
// reference does. Lengths are sqrt(x*x + y*y) in the accumulation type, the way torch.linalg.vector_norm computes
// them, so that underflow to zero is guarded identically to the pure-PyTorch path.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define KASF_HD __host__ __device__ __forceinline__
#else
#define KASF_HD inline
#endif

namespace kasf {

constexpr int kJoints = 17;
constexpr int kBones = 16;
constexpr int kOutChannels = 3;

KASF_HD float acc_sqrt(float x) { return sqrtf(x); }
KASF_HD double acc_sqrt(double x) { return sqrt(x); }

// Explicit conversions between the storage type and the accumulation type. PyTorch's CUDAExtension compiles with
// -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__, which remove
// __half's and __nv_bfloat16's implicit conversions and arithmetic, so all half arithmetic goes through these:
// widen, compute in acc_t, round to nearest. c10::Half/BFloat16 (the CPU kernels) convert with static_cast.
template <typename scalar_t>
struct Convert {
  template <typename acc_t>
  static KASF_HD acc_t widen(scalar_t x) { return static_cast<acc_t>(x); }
  template <typename acc_t>
  static KASF_HD scalar_t narrow(acc_t x) { return static_cast<scalar_t>(x); }
};
#if defined(__CUDACC__)
template <>
struct Convert<__half> {
  template <typename acc_t>
  static KASF_HD acc_t widen(__half x) { return static_cast<acc_t>(__half2float(x)); }
  template <typename acc_t>
  static KASF_HD __half narrow(acc_t x) { return __float2half_rn(static_cast<float>(x)); }
};
template <>
struct Convert<__nv_bfloat16> {
  template <typename acc_t>
  static KASF_HD acc_t widen(__nv_bfloat16 x) { return static_cast<acc_t>(__bfloat162float(x)); }
  template <typename acc_t>
  static KASF_HD __nv_bfloat16 narrow(acc_t x) { return __float2bfloat16_rn(static_cast<float>(x)); }
};
#endif

template <typename acc_t, typename scalar_t>
KASF_HD acc_t widen(scalar_t x) { return Convert<scalar_t>::template widen<acc_t>(x); }
template <typename scalar_t, typename acc_t>
KASF_HD scalar_t narrow(acc_t x) { return Convert<scalar_t>::template narrow<acc_t>(x); }

// a - b rounded to the storage type, as PyTorch's elementwise subtraction of two half tensors does.
template <typename scalar_t, typename acc_t>
KASF_HD acc_t rounded_difference(scalar_t a, scalar_t b) {
  return widen<acc_t>(narrow<scalar_t>(widen<acc_t>(a) - widen<acc_t>(b)));
}

// Human3.6M-17 bone table; tests compare the kernels with kasf.skeleton.BONE_PROXIMAL / BONE_DISTAL.
KASF_HD int bone_proximal(int k) {
  constexpr int8_t table[kBones] = {0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15};
  return table[k];
}
KASF_HD int bone_distal(int k) { return k + 1; }

// joints: one frame, kJoints * channels values; out: kJoints * 3 values. acc_t is float for half/float, double
// for double.
template <typename scalar_t, typename acc_t>
KASF_HD void anatomy_forward_frame(const scalar_t* joints, int64_t channels, scalar_t* out) {
  acc_t sum_x = 0, sum_y = 0, sum_len = 0;
  for (int k = 0; k < kBones; ++k) {
    const scalar_t* p = joints + bone_proximal(k) * channels;
    const scalar_t* d = joints + bone_distal(k) * channels;
    // Subtract in the input type first, as the pure path does (index_select - index_select).
    const acc_t vx = rounded_difference<scalar_t, acc_t>(p[0], d[0]);
    const acc_t vy = rounded_difference<scalar_t, acc_t>(p[1], d[1]);
    // The length is rounded to the input type before the zero test and the division, as in the pure path.
    acc_t len = widen<acc_t>(narrow<scalar_t>(acc_sqrt(vx * vx + vy * vy)));
    if (len == acc_t(0)) len = acc_t(1);
    const scalar_t dx = narrow<scalar_t>(vx / len);
    const scalar_t dy = narrow<scalar_t>(vy / len);
    const scalar_t ln = narrow<scalar_t>(len);
    out[k * kOutChannels + 0] = dx;
    out[k * kOutChannels + 1] = dy;
    out[k * kOutChannels + 2] = ln;
    sum_x += widen<acc_t>(dx);
    sum_y += widen<acc_t>(dy);
    sum_len += widen<acc_t>(ln);
  }
  out[kBones * kOutChannels + 0] = narrow<scalar_t>(sum_x / acc_t(kBones));
  out[kBones * kOutChannels + 1] = narrow<scalar_t>(sum_y / acc_t(kBones));
  out[kBones * kOutChannels + 2] = narrow<scalar_t>(sum_len / acc_t(kBones));
}

// grad_out: one frame, kJoints * 3; grad_joints: kJoints * channels, fully written (channels >= 2 get zero).
// The mean token spreads its gradient evenly over the 16 bones. For a bone of length L > 0 with unit vector u,
// d(dir)/dv = (I - u u^T) / L and d(L)/dv = u; for a guarded zero-length bone, dir = v / 1, so the gradient is the
// direction gradient itself and the length feature (a constant 1) passes none.
template <typename scalar_t, typename acc_t>
KASF_HD void anatomy_backward_frame(const scalar_t* grad_out, const scalar_t* joints, int64_t channels,
                                    scalar_t* grad_joints) {
  acc_t gx[kJoints], gy[kJoints];
  for (int j = 0; j < kJoints; ++j) {
    gx[j] = 0;
    gy[j] = 0;
  }
  const acc_t mean_gx = widen<acc_t>(grad_out[kBones * kOutChannels + 0]) / acc_t(kBones);
  const acc_t mean_gy = widen<acc_t>(grad_out[kBones * kOutChannels + 1]) / acc_t(kBones);
  const acc_t mean_gl = widen<acc_t>(grad_out[kBones * kOutChannels + 2]) / acc_t(kBones);
  for (int k = 0; k < kBones; ++k) {
    const int pi = bone_proximal(k), di = bone_distal(k);
    const scalar_t* p = joints + pi * channels;
    const scalar_t* d = joints + di * channels;
    const acc_t vx = rounded_difference<scalar_t, acc_t>(p[0], d[0]);
    const acc_t vy = rounded_difference<scalar_t, acc_t>(p[1], d[1]);
    const acc_t g_dx = widen<acc_t>(grad_out[k * kOutChannels + 0]) + mean_gx;
    const acc_t g_dy = widen<acc_t>(grad_out[k * kOutChannels + 1]) + mean_gy;
    const acc_t g_len = widen<acc_t>(grad_out[k * kOutChannels + 2]) + mean_gl;
    const acc_t len = widen<acc_t>(narrow<scalar_t>(acc_sqrt(vx * vx + vy * vy)));
    acc_t gvx, gvy;
    if (len == acc_t(0)) {
      gvx = g_dx;
      gvy = g_dy;
    } else {
      const acc_t ux = vx / len, uy = vy / len;
      const acc_t along = ux * g_dx + uy * g_dy;
      gvx = (g_dx - ux * along) / len + g_len * ux;
      gvy = (g_dy - uy * along) / len + g_len * uy;
    }
    gx[pi] += gvx;
    gy[pi] += gvy;
    gx[di] -= gvx;
    gy[di] -= gvy;
  }
  for (int j = 0; j < kJoints; ++j) {
    grad_joints[j * channels + 0] = narrow<scalar_t>(gx[j]);
    grad_joints[j * channels + 1] = narrow<scalar_t>(gy[j]);
    for (int64_t c = 2; c < channels; ++c) grad_joints[j * channels + c] = narrow<scalar_t>(acc_t(0));
  }
}

}  // namespace kasf
