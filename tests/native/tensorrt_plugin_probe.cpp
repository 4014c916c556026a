// Test probe for libkasf_tensorrt_plugin.so on a machine without TensorRT or a GPU.
//
// Loads the library as TensorRT's IPluginRegistry::loadLibrary does (dlopen, then getCreators), and asks the
// creator and the plugin the questions TensorRT asks while parsing an ONNX graph and building an engine: name,
// version, namespace, fields, output count, output types, supported formats, output shapes, shape checks. Every
// answer is printed as one "key value" line; tests/test_cpp_ext_tensorrt.py compares them with what the ONNX node
// of `--anatomy-op plugin` needs. Nothing here launches a kernel.
//
// TensorRT's IExprBuilder and IDimensionExpr are thin wrappers over an implementation pointer (mImpl); the probe
// supplies a minimal implementation so that getOutputShapes can be called outside TensorRT.
#include <NvInferImpl.h>
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <deque>

using namespace nvinfer1;

namespace {

class FakeDimensionImpl final : public apiv::VDimensionExpr {
 public:
  explicit FakeDimensionImpl(int64_t value, bool constant) : mValue(value), mConstant(constant) {}
  bool isConstant() const override { return mConstant; }
  int64_t getConstantValue() const override { return mValue; }
  bool isSizeTensor() const override { return false; }

 private:
  int64_t mValue;
  bool mConstant;
};

class FakeDimension final : public IDimensionExpr {
 public:
  FakeDimension(int64_t value, bool constant) : mFake(value, constant) { mImpl = &mFake; }
  ~FakeDimension() noexcept override = default;

 private:
  FakeDimensionImpl mFake;
};

// Owns every expression it hands out; "symbolic" dimensions (the batch) are non-constant.
class FakeBuilderImpl final : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t value) override { return &mDims.emplace_back(value, true); }
  IDimensionExpr const* symbol() { return &mDims.emplace_back(-1, false); }
  IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }

 private:
  std::deque<FakeDimension> mDims;
};

class FakeBuilder final : public IExprBuilder {
 public:
  explicit FakeBuilder(FakeBuilderImpl* impl) { mImpl = impl; }
  ~FakeBuilder() noexcept override = default;
};

DynamicPluginTensorDesc dynamic_desc(Dims dims, DataType type) {
  DynamicPluginTensorDesc desc{};
  desc.desc.dims = dims;
  desc.desc.type = type;
  desc.desc.format = TensorFormat::kLINEAR;
  desc.min = dims;
  desc.max = dims;
  desc.opt = dims;
  return desc;
}

Dims dims4(int64_t a, int64_t b, int64_t c, int64_t d) {
  Dims dims{};
  dims.nbDims = 4;
  dims.d[0] = a;
  dims.d[1] = b;
  dims.d[2] = c;
  dims.d[3] = d;
  return dims;
}

const char* type_name(DataType type) {
  switch (type) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT32: return "int32";
    default: return "other";
  }
}

int probe_format(IPluginV3OneBuild* build, DataType in_type, DataType out_type, TensorFormat format) {
  DynamicPluginTensorDesc io[2] = {dynamic_desc(dims4(-1, 27, 17, 3), in_type),
                                   dynamic_desc(dims4(-1, 27, 17, 3), out_type)};
  io[0].desc.format = format;
  io[1].desc.format = format;
  return build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1) ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libkasf_tensorrt_plugin.so\n", argv[0]);
    return 2;
  }
  // RTLD_NOW: every symbol must resolve without libnvinfer (the library is meant to need only the driver).
  void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    std::printf("dlopen_error %s\n", dlerror());
    return 1;
  }
  std::printf("dlopen ok\n");
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
  std::printf("has_getCreators %d\n", get_creators != nullptr);
  std::printf("has_setLoggerFinder %d\n", dlsym(handle, "setLoggerFinder") != nullptr);
  if (get_creators == nullptr) return 1;

  int32_t count = 0;
  IPluginCreatorInterface* const* creators = get_creators(count);
  std::printf("creators %d\n", count);
  if (count < 1) return 1;
  InterfaceInfo info = creators[0]->getInterfaceInfo();
  std::printf("creator_interface %s %d.%d\n", info.kind, info.major, info.minor);
  if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0) return 1;
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  std::printf("name %s\n", creator->getPluginName());
  std::printf("version %s\n", creator->getPluginVersion());
  std::printf("namespace [%s]\n", creator->getPluginNamespace());
  PluginFieldCollection const* fields = creator->getFieldNames();
  std::printf("creator_fields %d\n", fields == nullptr ? -1 : fields->nbFields);

  PluginFieldCollection empty{0, nullptr};
  IPluginV3* plugin = creator->createPlugin("anatomy", &empty, TensorRTPhase::kBUILD);
  std::printf("created %d\n", plugin != nullptr);
  if (plugin == nullptr) return 1;
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::printf("plugin_name %s %s [%s]\n", core->getPluginName(), core->getPluginVersion(), core->getPluginNamespace());
  std::printf("outputs %d\n", build->getNbOutputs());

  for (DataType type : {DataType::kFLOAT, DataType::kHALF}) {
    DataType out = DataType::kINT32;
    int32_t status = build->getOutputDataTypes(&out, 1, &type, 1);
    std::printf("output_type.%s %s %d\n", type_name(type), type_name(out), status);
  }
  std::printf("format.float32 %d\n", probe_format(build, DataType::kFLOAT, DataType::kFLOAT, TensorFormat::kLINEAR));
  std::printf("format.float16 %d\n", probe_format(build, DataType::kHALF, DataType::kHALF, TensorFormat::kLINEAR));
  std::printf("format.int32 %d\n", probe_format(build, DataType::kINT32, DataType::kINT32, TensorFormat::kLINEAR));
  std::printf("format.float32_to_float16 %d\n",
              probe_format(build, DataType::kFLOAT, DataType::kHALF, TensorFormat::kLINEAR));
  std::printf("format.float32_chw32 %d\n", probe_format(build, DataType::kFLOAT, DataType::kFLOAT, TensorFormat::kCHW32));

  // (batch, 27, 17, 3) with a symbolic batch -> (batch, 27, 17, 3): leading expressions passed through, last = 3.
  FakeBuilderImpl impl;
  FakeBuilder builder(&impl);
  DimsExprs input{};
  input.nbDims = 4;
  input.d[0] = impl.symbol();
  input.d[1] = impl.constant(27);
  input.d[2] = impl.constant(17);
  input.d[3] = impl.constant(3);
  DimsExprs output{};
  int32_t status = build->getOutputShapes(&input, 1, nullptr, 0, &output, 1, builder);
  bool passed_through = output.d[0] == input.d[0] && output.d[1] == input.d[1] && output.d[2] == input.d[2];
  bool last_is_3 = output.nbDims == 4 && output.d[3] != nullptr && output.d[3]->isConstant() &&
                   output.d[3]->getConstantValue() == 3;
  std::printf("output_shape %d rank %d leading_passed_through %d last_is_3 %d\n", status, output.nbDims,
              passed_through, last_is_3);
  DimsExprs rank1{};
  rank1.nbDims = 1;
  rank1.d[0] = impl.constant(17);
  std::printf("output_shape_rank1 %d\n", build->getOutputShapes(&rank1, 1, nullptr, 0, &output, 1, builder));

  DynamicPluginTensorDesc in17 = dynamic_desc(dims4(-1, 27, 17, 3), DataType::kFLOAT);
  DynamicPluginTensorDesc in16 = dynamic_desc(dims4(-1, 27, 16, 3), DataType::kFLOAT);
  DynamicPluginTensorDesc in1ch = dynamic_desc(dims4(-1, 27, 17, 1), DataType::kFLOAT);
  DynamicPluginTensorDesc out = dynamic_desc(dims4(-1, 27, 17, 3), DataType::kFLOAT);
  std::printf("configure.17x3 %d\n", build->configurePlugin(&in17, 1, &out, 1));
  std::printf("configure.16x3 %d\n", build->configurePlugin(&in16, 1, &out, 1));
  std::printf("configure.17x1 %d\n", build->configurePlugin(&in1ch, 1, &out, 1));

  PluginTensorDesc concrete = in17.desc;
  concrete.dims = dims4(4, 27, 17, 3);
  PluginTensorDesc concrete_out = out.desc;
  concrete_out.dims = dims4(4, 27, 17, 3);
  std::printf("shape_change.4x27x17x3 %d\n", runtime->onShapeChange(&concrete, 1, &concrete_out, 1));
  concrete.dims = dims4(4, 27, 16, 3);
  std::printf("shape_change.4x27x16x3 %d\n", runtime->onShapeChange(&concrete, 1, &concrete_out, 1));
  PluginFieldCollection const* serialised = runtime->getFieldsToSerialize();
  std::printf("serialised_fields %d\n", serialised == nullptr ? -1 : serialised->nbFields);

  IPluginV3* copy = plugin->clone();
  std::printf("clone %d\n", copy != nullptr && copy != plugin);
  delete copy;
  delete plugin;
  return 0;
}
