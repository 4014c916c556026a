// kasf::anatomy_features: schema and CPU kernels of the Bone Extractor operator.
//
// The schema lives here (C++), so a process that only loads this library, e.g. a C++ deployment through
// torch::jit, gets the operator too. Fake (meta) kernels and autograd are registered from Python
// (kasf/ops.py), as torch.library recommends for ops used with torch.compile.
#include <Python.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "anatomy_kernels.h"
#include "anatomy_op.h"

namespace kasf {
namespace {

// Frames per parallel task: one frame is ~150 flops, so small grains would cost more in scheduling than work.
constexpr int64_t kGrain = 2048;

at::Tensor anatomy_features_cpu(const at::Tensor& joints) {
  TORCH_CHECK(joints.device().is_cpu(), "kasf::anatomy_features (CPU kernel): joints must be on the CPU, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features");
  const int64_t channels = joints.size(-1);
  at::Tensor out = at::empty(output_shape(joints), joints.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(), "anatomy_features_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = joints.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, frames, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t f = begin; f < end; ++f) {
        anatomy_forward_frame<scalar_t, acc_t>(in + f * kJoints * channels, channels, o + f * kJoints * kOutChannels);
      }
    });
  });
  return out;
}

at::Tensor anatomy_features_backward_cpu(const at::Tensor& grad, const at::Tensor& joints) {
  TORCH_CHECK(joints.device().is_cpu(), "kasf::anatomy_features_backward (CPU kernel): joints must be on the CPU, got ",
              joints.device());
  const int64_t frames = check_joints(joints, "kasf::anatomy_features_backward");
  check_grad(grad, joints, "kasf::anatomy_features_backward");
  const int64_t channels = joints.size(-1);
  at::Tensor grad_joints = at::empty_like(joints);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(), "anatomy_features_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* in = joints.data_ptr<scalar_t>();
    scalar_t* gj = grad_joints.data_ptr<scalar_t>();
    at::parallel_for(0, frames, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t f = begin; f < end; ++f) {
        anatomy_backward_frame<scalar_t, acc_t>(g + f * kJoints * kOutChannels, in + f * kJoints * channels, channels,
                                                gj + f * kJoints * channels);
      }
    });
  });
  return grad_joints;
}

}  // namespace

TORCH_LIBRARY(kasf, m) {
  m.def("anatomy_features(Tensor joints) -> Tensor");
  m.def("anatomy_features_backward(Tensor grad, Tensor joints) -> Tensor");
}

TORCH_LIBRARY_IMPL(kasf, CPU, m) {
  m.impl("anatomy_features", &anatomy_features_cpu);
  m.impl("anatomy_features_backward", &anatomy_features_backward_cpu);
}

}  // namespace kasf

// An importable, empty Python module: importing kasf._C runs the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "kasf native operators (kasf::anatomy_features)",
                                      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
