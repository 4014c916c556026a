// The anatomy CUDA kernels. One thread computes one frame (17 joints in, 17 rows out): a frame is tiny, so a
// thread per frame needs no atomics or shared memory, and neighbouring threads read neighbouring frames.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "anatomy_cuda_kernels.cuh"
#include "anatomy_kernels.h"

namespace kasf {
namespace {

constexpr int kThreads = 128;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ joints, int64_t channels, int64_t frames,
                               scalar_t* __restrict__ out) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f < frames) {
    anatomy_forward_frame<scalar_t, typename Acc<scalar_t>::type>(joints + f * kJoints * channels, channels,
                                                                   out + f * kJoints * kOutChannels);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ joints,
                                int64_t channels, int64_t frames, scalar_t* __restrict__ grad_joints) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f < frames) {
    anatomy_backward_frame<scalar_t, typename Acc<scalar_t>::type>(
        grad + f * kJoints * kOutChannels, joints + f * kJoints * channels, channels, grad_joints + f * kJoints * channels);
  }
}

unsigned int blocks_for(int64_t frames) { return static_cast<unsigned int>((frames + kThreads - 1) / kThreads); }

}  // namespace

template <typename scalar_t>
cudaError_t launch_anatomy_forward(const scalar_t* joints, int64_t channels, int64_t frames, scalar_t* out,
                                   cudaStream_t stream) {
  if (frames <= 0) return cudaSuccess;
  forward_kernel<scalar_t><<<blocks_for(frames), kThreads, 0, stream>>>(joints, channels, frames, out);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_anatomy_backward(const scalar_t* grad, const scalar_t* joints, int64_t channels, int64_t frames,
                                    scalar_t* grad_joints, cudaStream_t stream) {
  if (frames <= 0) return cudaSuccess;
  backward_kernel<scalar_t><<<blocks_for(frames), kThreads, 0, stream>>>(grad, joints, channels, frames, grad_joints);
  return cudaGetLastError();
}

#define KASF_INSTANTIATE(T)                                                                                    \
  template cudaError_t launch_anatomy_forward<T>(const T*, int64_t, int64_t, T*, cudaStream_t);               \
  template cudaError_t launch_anatomy_backward<T>(const T*, const T*, int64_t, int64_t, T*, cudaStream_t);
KASF_INSTANTIATE(float)
KASF_INSTANTIATE(double)
KASF_INSTANTIATE(__half)
KASF_INSTANTIATE(__nv_bfloat16)
#undef KASF_INSTANTIATE

}  // namespace kasf
