// TensorRT plugin (IPluginV3, TensorRT >= 10) for the kasf::AnatomyFeatures ONNX node of `--anatomy-op plugin`.
//
// TensorRT's ONNX parser maps a node it does not know to the plugin creator whose name is the node's op_type
// ("AnatomyFeatures"), version "1" and the empty namespace, so the exported node needs no extra attributes. The
// plugin has no parameters: nothing to serialise, one input (..., 17, C>=2) and one output (..., 17, 3) of the same
// type, float32 or float16, linear layout. enqueue runs the CUDA kernel that the PyTorch op uses
// (anatomy_cuda_kernels.cu) on TensorRT's stream.
//
// Registration: the library exports TensorRT 10's plugin-library interface (getCreators, setLoggerFinder) and calls
// nothing in libnvinfer, so it has no undefined TensorRT symbols. Whoever loads it registers it with their own
// registry: IPluginRegistry::loadLibrary (Python: trt.get_plugin_registry().load_library(path), as kasf does) or
// trtexec --dynamicPlugins. Build it with cpp_ext/tensorrt/CMakeLists.txt.
#include <NvInferRuntime.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <new>

#include "../anatomy_cuda_kernels.cuh"

namespace kasf {
namespace trt {

using namespace nvinfer1;

constexpr char kName[] = "AnatomyFeatures";
constexpr char kVersion[] = "1";
constexpr char kNamespace[] = "";
constexpr int64_t kJointCount = 17;

class AnatomyFeaturesPlugin final : public IPluginV3,
                                    public IPluginV3OneCore,
                                    public IPluginV3OneBuild,
                                    public IPluginV3OneRuntime {
 public:
  AnatomyFeaturesPlugin() = default;

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override { return new (std::nothrow) AnatomyFeaturesPlugin(); }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 1 || nbOutputs != 1) return 1;
    Dims const& dims = in[0].desc.dims;
    if (dims.nbDims < 2) return 1;
    if (dims.d[dims.nbDims - 2] != kJointCount && dims.d[dims.nbDims - 2] != -1) return 1;
    if (dims.d[dims.nbDims - 1] != -1 && dims.d[dims.nbDims - 1] < 2) return 1;
    return 0;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 1 || nbOutputs != 1) return 1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims < 2) return 1;
    outputs[0].nbDims = inputs[0].nbDims;
    for (int32_t i = 0; i < inputs[0].nbDims - 1; ++i) outputs[0].d[i] = inputs[0].d[i];
    outputs[0].d[inputs[0].nbDims - 1] = exprBuilder.constant(3);
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    return desc.type == inOut[0].desc.type;
  }

  int32_t getNbOutputs() const noexcept override { return 1; }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    if (nbInputs != 1 || nbOutputs != 1) return 1;
    Dims const& dims = in[0].dims;
    return (dims.nbDims >= 2 && dims.d[dims.nbDims - 2] == kJointCount && dims.d[dims.nbDims - 1] >= 2) ? 0 : 1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                  void const* const* inputs, void* const* outputs, void* /*workspace*/,
                  cudaStream_t stream) noexcept override {
    Dims const& dims = inputDesc[0].dims;
    const int64_t channels = dims.d[dims.nbDims - 1];
    int64_t frames = 1;
    for (int32_t i = 0; i < dims.nbDims - 2; ++i) frames *= dims.d[i];
    cudaError_t status = cudaErrorInvalidValue;
    if (inputDesc[0].type == DataType::kFLOAT) {
      status = launch_anatomy_forward(static_cast<float const*>(inputs[0]), channels, frames,
                                      static_cast<float*>(outputs[0]), stream);
    } else if (inputDesc[0].type == DataType::kHALF) {
      status = launch_anatomy_forward(static_cast<__half const*>(inputs[0]), channels, frames,
                                      static_cast<__half*>(outputs[0]), stream);
    }
    return status == cudaSuccess ? 0 : 1;
  }

  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mNoFields; }

 private:
  PluginFieldCollection mNoFields{0, nullptr};
};

class AnatomyFeaturesCreator final : public IPluginCreatorV3One {
 public:
  IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* /*fc*/,
                          TensorRTPhase /*phase*/) noexcept override {
    return new (std::nothrow) AnatomyFeaturesPlugin();
  }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mNoFields; }
  AsciiChar const* getPluginName() const noexcept override { return kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  PluginFieldCollection mNoFields{0, nullptr};
};

AnatomyFeaturesCreator& creator() {
  static AnatomyFeaturesCreator instance;
  return instance;
}

}  // namespace trt
}  // namespace kasf

extern "C" {

// The plugin-library interface of TensorRT 10 (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* /*finder*/) {}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&kasf::trt::creator()};
  nbCreators = 1;
  return creators;
}

}  // extern "C"
