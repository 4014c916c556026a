// Input checks shared by the CPU and CUDA implementations of kasf::anatomy_features.
#pragma once

#include <torch/types.h>

namespace kasf {

// joints: (..., 17, C) with C >= 2, floating, contiguous. Returns the number of frames (product of leading dims).
inline int64_t check_joints(const at::Tensor& joints, const char* what) {
  TORCH_CHECK(joints.dim() >= 2, what, ": joints must have shape (..., 17, C) with C >= 2, got a tensor of rank ",
              joints.dim());
  TORCH_CHECK(joints.size(-2) == 17, what, ": joints must have 17 joints (Human3.6M-17) in dim -2, got shape ",
              joints.sizes());
  TORCH_CHECK(joints.size(-1) >= 2, what, ": joints need at least the x and y channels in the last dim, got shape ",
              joints.sizes());
  TORCH_CHECK(at::isFloatingType(joints.scalar_type()), what,
              ": joints must be float32, float64, float16 or bfloat16, got ", joints.scalar_type());
  TORCH_CHECK(joints.is_contiguous(), what, ": joints must be contiguous (call .contiguous() first)");
  return joints.numel() / (17 * joints.size(-1));
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& joints, const char* what) {
  auto expected = joints.sizes().vec();
  expected.back() = 3;
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), what, ": grad must have shape ", at::IntArrayRef(expected),
              ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == joints.scalar_type(), what, ": grad dtype ", grad.scalar_type(),
              " differs from joints dtype ", joints.scalar_type());
  TORCH_CHECK(grad.device() == joints.device(), what, ": grad is on ", grad.device(), " but joints on ",
              joints.device());
  TORCH_CHECK(grad.is_contiguous(), what, ": grad must be contiguous");
}

inline std::vector<int64_t> output_shape(const at::Tensor& joints) {
  auto shape = joints.sizes().vec();
  shape.back() = 3;
  return shape;
}

}  // namespace kasf
