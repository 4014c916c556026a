// CUDA kernels of kasf::anatomy_features, launched on the current stream. One thread computes one frame
// (17 joints in, 17 rows out): the frame is tiny, so a thread per frame needs no atomics or shared memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "anatomy_kernels.h"
#include "anatomy_op.h"

namespace kasf {
namespace {

constexpr int kThreads = 128;

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ joints, int64_t channels, int64_t frames,
                               scalar_t* __restrict__ out) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f < frames) anatomy_forward_frame<scalar_t, acc_t>(joints + f * kJoints * channels, channels,
                                                           out + f * kJoints * kOutChannels);
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ joints,
                                int64_t channels, int64_t frames, scalar_t* __restrict__ grad_joints) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f < frames) anatomy_backward_frame<scalar_t, acc_t>(grad + f * kJoints * kOutChannels,
                                                            joints + f * kJoints * channels, channels,
                                                            grad_joints + f * kJoints * channels);
}

unsigned int blocks_for(int64_t frames) { return static_cast<unsigned int>((frames + kThreads - 1) / kThreads); }

at::Tensor anatomy_features_cuda(const at::Tensor& joints) {
  TORCH_CHECK(joints.is_cuda(), "kasf::anatomy_features (CUDA kernel): joints must be a CUDA tensor, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features");
  const c10::cuda::CUDAGuard guard(joints.device());
  at::Tensor out = at::empty(output_shape(joints), joints.options());
  if (frames == 0) return out;
  const int64_t channels = joints.size(-1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(), "anatomy_features_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(frames), kThreads, 0, stream>>>(
        joints.data_ptr<scalar_t>(), channels, frames, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor anatomy_features_backward_cuda(const at::Tensor& grad, const at::Tensor& joints) {
  TORCH_CHECK(joints.is_cuda(), "kasf::anatomy_features_backward (CUDA kernel): joints must be a CUDA tensor, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features_backward");
  check_grad(grad, joints, "kasf::anatomy_features_backward");
  const c10::cuda::CUDAGuard guard(joints.device());
  at::Tensor grad_joints = at::empty_like(joints);
  if (frames == 0) return grad_joints;
  const int64_t channels = joints.size(-1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(), "anatomy_features_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<blocks_for(frames), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), joints.data_ptr<scalar_t>(), channels, frames, grad_joints.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_joints;
}

}  // namespace

TORCH_LIBRARY_IMPL(kasf, CUDA, m) {
  m.impl("anatomy_features", &anatomy_features_cuda);
  m.impl("anatomy_features_backward", &anatomy_features_backward_cuda);
}

}  // namespace kasf
