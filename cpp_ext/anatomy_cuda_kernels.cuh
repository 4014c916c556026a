// Launchers of the anatomy CUDA kernels, free of torch: shared by the PyTorch op (anatomy_cuda.cu) and the
// TensorRT plugin (tensorrt/anatomy_plugin.cpp), so both run the same device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kasf {

// scalar_t: float, double, __half or __nv_bfloat16. joints: frames x 17 x channels; out: frames x 17 x 3.
template <typename scalar_t>
cudaError_t launch_anatomy_forward(const scalar_t* joints, int64_t channels, int64_t frames, scalar_t* out,
                                   cudaStream_t stream);

// grad: frames x 17 x 3; grad_joints: frames x 17 x channels (fully written).
template <typename scalar_t>
cudaError_t launch_anatomy_backward(const scalar_t* grad, const scalar_t* joints, int64_t channels, int64_t frames,
                                    scalar_t* grad_joints, cudaStream_t stream);

}  // namespace kasf
