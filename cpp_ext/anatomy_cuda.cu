// CUDA implementation of kasf::anatomy_features for PyTorch: checks, output allocation, dispatch on dtype, and a
// launch on the current stream through the torch-free launchers of anatomy_cuda_kernels.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "anatomy_cuda_kernels.cuh"
#include "anatomy_op.h"

namespace kasf {
namespace {

// c10::Half and c10::BFloat16 have the bit layout of CUDA's __half and __nv_bfloat16.
template <typename T> struct Device { using type = T; };
template <> struct Device<c10::Half> { using type = __half; };
template <> struct Device<c10::BFloat16> { using type = __nv_bfloat16; };

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

template <typename T>
const typename Device<T>::type* dev(const at::Tensor& t) {
  return reinterpret_cast<const typename Device<T>::type*>(t.const_data_ptr<T>());
}

template <typename T>
typename Device<T>::type* dev_mut(at::Tensor& t) {
  return reinterpret_cast<typename Device<T>::type*>(t.mutable_data_ptr<T>());
}

template <typename F>
void dispatch(at::ScalarType type, const char* what, F&& body) {
  switch (type) {
    case at::kFloat: body(float{}); break;
    case at::kDouble: body(double{}); break;
    case at::kHalf: body(c10::Half{}); break;
    case at::kBFloat16: body(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", type);
  }
}

at::Tensor anatomy_features_cuda(const at::Tensor& joints) {
  TORCH_CHECK(joints.is_cuda(), "kasf::anatomy_features (CUDA kernel): joints must be a CUDA tensor, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features");
  const c10::cuda::CUDAGuard guard(joints.device());
  at::Tensor out = at::empty(output_shape(joints), joints.options());
  const int64_t channels = joints.size(-1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(joints.scalar_type(), "kasf::anatomy_features", [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_anatomy_forward(dev<T>(joints), channels, frames, dev_mut<T>(out), stream),
                 "kasf::anatomy_features");
  });
  return out;
}

at::Tensor anatomy_features_backward_cuda(const at::Tensor& grad, const at::Tensor& joints) {
  TORCH_CHECK(joints.is_cuda(), "kasf::anatomy_features_backward (CUDA kernel): joints must be a CUDA tensor, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features_backward");
  check_grad(grad, joints, "kasf::anatomy_features_backward");
  const c10::cuda::CUDAGuard guard(joints.device());
  at::Tensor grad_joints = at::empty_like(joints);
  const int64_t channels = joints.size(-1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(joints.scalar_type(), "kasf::anatomy_features_backward", [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_anatomy_backward(dev<T>(grad), dev<T>(joints), channels, frames, dev_mut<T>(grad_joints),
                                         stream),
                 "kasf::anatomy_features_backward");
  });
  return grad_joints;
}

}  // namespace

TORCH_LIBRARY_IMPL(kasf, CUDA, m) {
  m.impl("anatomy_features", &anatomy_features_cuda);
  m.impl("anatomy_features_backward", &anatomy_features_backward_cuda);
}

}  // namespace kasf
