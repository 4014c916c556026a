// kasf::lift_cpu: a whole KASportsFormer / MotionAGFormer forward (input normalisation, anatomy features,
// embeddings, the spatio-temporal blocks, the head) in one CPU call.
//
// Why: at the demo size (32 channels, 459 tokens a window) a forward is ~5,000 small tensor operations, and eager
// PyTorch, ONNX Runtime and the compilers all spend most of a window dispatching them (docs/cpu_inference.md). Here
// a module is three passes over the tokens (rows: LayerNorm and the input products; sequences: attention or the
// graph; rows: output product, residual, LayerNorm, MLP with GELU, residual), each split over the intra-op threads,
// with kernels compiled for AVX-512, AVX2 or the baseline and picked at run time (cpu_blocks_kernels.h).
//
// Inference only, float32 windows (B, T, J, 3). The weights come as one flat tensor with the size of each piece, in
// the order written by kasf.model.native_cpu.pack_lifter (documented there); every piece's size is checked against
// the config. With the optional `products` tensor (the product weights again, packed as bf16 pairs by
// kasf.model.native_cpu.bf16_pairs) every matrix product runs in bf16 with float32 sums (cpu_blocks_bf16.cpp);
// all else stays float32.

#include <torch/library.h>
#include <ATen/ATen.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_blocks_kernels_api.h"

namespace kasf {
namespace {

using namespace kasf_cpu;

struct Kernels {
  const char* name;
  decltype(&generic::layer_norm_rows) layer_norm_rows;
  decltype(&generic::product_rows) product_rows;
  decltype(&generic::attend_sequence) attend_sequence;
  decltype(&generic::graph_sequence) graph_sequence;
  decltype(&generic::fuse_rows) fuse_rows;
  decltype(&generic::attention_rows_scratch) attention_rows_scratch;
  decltype(&generic::attention_rows_forward) attention_rows_forward;
  decltype(&generic::attention_rows_backward) attention_rows_backward;
};

#define KASF_KERNELS(NS)                                                                                          \
  Kernels{#NS, &NS::layer_norm_rows, &NS::product_rows, &NS::attend_sequence, &NS::graph_sequence, &NS::fuse_rows, \
          &NS::attention_rows_scratch, &NS::attention_rows_forward, &NS::attention_rows_backward}

// The widest kernel set this CPU runs; KASF_CPU_KERNELS=avx512|avx2|generic asks for one (tests run each), and
// asking for one the CPU cannot run is an error, not a silent fallback.
const Kernels& kernels() {
  static const Kernels chosen = [] {
    const char* asked = std::getenv("KASF_CPU_KERNELS");
    const std::string want = asked ? asked : "";
    if (want == "avx512" || (want.empty() && avx512::supported())) {
      TORCH_CHECK(avx512::supported(), "KASF_CPU_KERNELS=avx512 but this CPU (or build) has no AVX-512");
      return KASF_KERNELS(avx512);
    }
    if (want == "avx2" || (want.empty() && avx2::supported())) {
      TORCH_CHECK(avx2::supported(), "KASF_CPU_KERNELS=avx2 but this CPU (or build) has no AVX2 and FMA");
      return KASF_KERNELS(avx2);
    }
    TORCH_CHECK(want.empty() || want == "generic", "KASF_CPU_KERNELS must be avx512, avx2 or generic, got '", want,
                "'");
    return KASF_KERNELS(generic);
  }();
  return chosen;
}

// The bf16 product kernel: AMX where the CPU has it and Linux grants the tile registers, else AVX512-BF16;
// KASF_CPU_BF16=amx|avx512_bf16 asks for one (tests run each). name is "" where neither runs.
struct Bf16Kernel {
  const char* name;
  decltype(&bf16::product_rows_amx) product;
};

const Bf16Kernel& bf16_kernel() {
  static const Bf16Kernel chosen = [] {
    const char* asked = std::getenv("KASF_CPU_BF16");
    const std::string want = asked ? asked : "";
    TORCH_CHECK(want.empty() || want == "amx" || want == "avx512_bf16", "KASF_CPU_BF16 must be amx or avx512_bf16, "
                "got '", want, "'");
    if (want == "amx" || (want.empty() && bf16::amx_supported())) {
      TORCH_CHECK(bf16::amx_supported(), "KASF_CPU_BF16=amx but this CPU (or its kernel) offers no AMX-BF16 tiles");
      return Bf16Kernel{"amx", &bf16::product_rows_amx};
    }
    if (want == "avx512_bf16" || bf16::dot_supported()) {
      TORCH_CHECK(bf16::dot_supported(), "KASF_CPU_BF16=avx512_bf16 but this CPU has no AVX512-BF16");
      return Bf16Kernel{"avx512_bf16", &bf16::product_rows_dot};
    }
    return Bf16Kernel{"", nullptr};
  }();
  return chosen;
}

// Config entries (kasf.model.native_cpu.CONFIG_KEYS).
enum ConfigIndex { kLayers, kDim, kHeads, kHidden, kFrames, kJoints, kAnatomy, kAdaptive, kSimilarity, kNeighbours,
                   kRep, kOut, kInputNorm, kRoot, kLimbHidden, kConfigSize };
enum InputNorm { kNormNone = 0, kNormFrame = 1, kNormWindow = 2 };  // kasf.model.input_norm.INPUT_NORMS
constexpr float kMinWeight = 1e-2f, kMinSize = 1e-4f;               // kasf.model.input_norm's constants
int64_t padded16(int64_t n) { return (n + 15) / 16 * 16; }
int64_t padded32(int64_t n) { return (n + 31) / 32 * 32; }

// A matrix product's weight: (K, N) float32 rows, and the same packed as bf16 pairs when the call runs bf16.
struct ProductWeight {
  const float* w = nullptr;
  const uint16_t* packed = nullptr;
  int K = 0, N = 0;
};

// y = epilogue(x W + bias) for `rows` rows, in bf16 where W was packed for it, else with the fp32 kernels.
void product(const Kernels& k, int epilogue, const float* x, int64_t ldx, int64_t rows, const ProductWeight& w,
             const float* bias, float* y, int64_t ldy, const float* scale) {
  if (w.packed == nullptr) {
    k.product_rows(epilogue, x, ldx, rows, w.K, w.w, bias, w.N, y, ldy, scale);
    return;
  }
  thread_local std::vector<uint16_t> scratch;  // x's rows converted to bf16
  const size_t needed = (size_t)bf16::bf16_scratch_values(w.K);
  if (scratch.size() < needed) scratch.resize(needed);
  bf16_kernel().product(epilogue, x, ldx, rows, w.K, w.packed, bias, w.N, y, ldy, scale, scratch.data());
}

// Walks the packed weights: one flat float32 tensor (one argument instead of ~400: converting a tensor list costs
// ~0.2 us a tensor per call) with the size of each piece beside it, so every piece is still checked by name.
class WeightCursor {
 public:
  WeightCursor(const at::Tensor& weights, at::IntArrayRef sizes, const std::optional<at::Tensor>& products)
      : sizes_(sizes) {
    TORCH_CHECK(weights.dim() == 1 && weights.scalar_type() == at::kFloat && weights.is_contiguous() &&
                    weights.device().is_cpu(),
                "kasf::lift_cpu: the weights must be one flat contiguous float32 CPU tensor");
    int64_t total = 0;
    for (int64_t size : sizes) total += size;
    TORCH_CHECK(total == weights.numel(), "kasf::lift_cpu: the piece sizes add up to ", total, " values, the weights "
                "hold ", weights.numel());
    data_ = weights.data_ptr<float>();
    if (products.has_value()) {
      const at::Tensor& p = *products;
      TORCH_CHECK(p.dim() == 1 && p.scalar_type() == at::kBFloat16 && p.is_contiguous() && p.device().is_cpu(),
                  "kasf::lift_cpu: the bf16 products must be one flat contiguous bfloat16 CPU tensor");
      TORCH_CHECK(bf16_kernel().product != nullptr, "kasf::lift_cpu: bf16 products need AMX-BF16 or AVX512-BF16, "
                  "which this CPU (or build) lacks");
      packed_ = reinterpret_cast<const uint16_t*>(p.data_ptr<at::BFloat16>());
      packed_total_ = p.numel();
    }
  }
  // A product's (K, N) weight, with its bf16 packing when the call has one.
  ProductWeight take_product(int64_t K, int64_t N, const char* what) {
    ProductWeight weight;
    weight.w = take(K * N, what);
    weight.K = (int)K;
    weight.N = (int)N;
    if (packed_ != nullptr) {
      const int64_t size = padded32(K) * N;
      TORCH_CHECK(packed_offset_ + size <= packed_total_, "kasf::lift_cpu: the bf16 products ended before ", what);
      weight.packed = packed_ + packed_offset_;
      packed_offset_ += size;
    }
    return weight;
  }
  // The next piece, which must hold `numel` floats (0: an empty placeholder).
  const float* take(int64_t numel, const char* what) {
    TORCH_CHECK(next_ < sizes_.size(), "kasf::lift_cpu: the weight list ended before ", what);
    TORCH_CHECK(sizes_[next_] == numel, "kasf::lift_cpu: weight ", next_, " (", what, ") has ", sizes_[next_],
                " values, expected ", numel);
    const float* piece = data_ + offset_;
    offset_ += numel;
    ++next_;
    return numel ? piece : nullptr;
  }
  void expect_end() const {
    TORCH_CHECK(next_ == sizes_.size(), "kasf::lift_cpu: ", sizes_.size() - next_,
                " weights left over: the list does not match the config");
    TORCH_CHECK(packed_offset_ == packed_total_, "kasf::lift_cpu: ", packed_total_ - packed_offset_,
                " bf16 product values left over: they do not match the config");
  }

 private:
  at::IntArrayRef sizes_;
  const float* data_ = nullptr;
  int64_t offset_ = 0;
  size_t next_ = 0;
  const uint16_t* packed_ = nullptr;
  int64_t packed_offset_ = 0, packed_total_ = 0;
};

struct Shape {
  int64_t batch, frames, joints, rows;
  int D, heads, hidden, neighbours;
  bool similarity;
  int64_t sequences(bool spatial) const { return spatial ? batch * frames : batch * joints; }
  Sequence sequence(bool spatial, int64_t s) const {
    if (spatial) return Sequence{s * joints, 1, (int)joints};
    return Sequence{(s / joints) * frames * joints + s % joints, joints, (int)frames};
  }
};

// The intra-op threads as one team for a whole forward: one OpenMP parallel region, each thread with a fixed share
// of the token rows, and a barrier only before and after each module's sequence pass (2 a module instead of the 3
// parallel regions a module took with at::parallel_for). Row passes touch only their thread's own rows, so a
// module's last row pass, the next module's first and a block's fusion need no barrier between them. In an A/B on
// the 2-core machine this was as fast or faster at every size (docs/cpu_inference.md); the threads still spend
// ~12 % of a demo window waiting at barriers for each other.
struct Team {
  int id = 0, size = 1;
  void sync() const {
#ifdef _OPENMP
    if (size > 1) {
#pragma omp barrier
    }
#endif
  }
  // This thread's share of [0, n): contiguous, in whole units of `unit` where there are enough of them.
  std::pair<int64_t, int64_t> share(int64_t n, int64_t unit = 1) const {
    const int64_t units = (n + unit - 1) / unit;
    const int64_t begin = std::min(n, units * id / size * unit), end = std::min(n, units * (id + 1) / size * unit);
    return {begin, end};
  }
};

// Runs body(team) on every intra-op thread (at::get_num_threads()) at once; on one thread, or already inside a
// parallel region, on this thread alone. Every thread must call team.sync() the same number of times.
template <class Body>
void in_team(Body&& body) {
  const int threads = at::get_num_threads();
#ifdef _OPENMP
  if (threads > 1 && !at::in_parallel_region() && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
    {
      Team team;
      team.id = omp_get_thread_num();
      team.size = omp_get_num_threads();
      body(team);
    }
    return;
  }
#endif
  (void)threads;
  body(Team{});
}

// Per-thread scratch, reused by every module: rows of LayerNorm output and MLP hidden units for a chunk of tokens,
// and the attention or graph workspace of one sequence.
constexpr int64_t kChunk = 96;  // a multiple of the fp32 tile (6 rows) and of the AMX block (32 rows)
constexpr int64_t kRowUnit = 32;  // thread shares of the rows in whole AMX blocks (cpu_blocks_bf16.cpp)

struct Workspace {
  Workspace(const Shape& s, int threads) {
    const int64_t longest = s.frames > s.joints ? s.frames : s.joints;
    const int64_t padded = (longest + 15) / 16 * 16;
    // the larger of: attention (q, v, scores, output transposed) and the graph (adjacency, degrees, nodes and
    // similarities transposed, the gathered V rows and their aggregate)
    const int64_t attention = 3 * s.D * padded + longest * padded;
    const int64_t graph = longest * longest + longest + (s.D + longest) * padded + 2 * longest * s.D;
    per_thread = kChunk * (s.D + s.hidden) + (attention > graph ? attention : graph);
    scratch = at::empty({threads, per_thread}, at::kFloat);
    normed = at::empty({s.rows, s.D}, at::kFloat);
    packed = at::empty({s.rows, 3 * s.D}, at::kFloat);
    mixed = at::empty({s.rows, s.D}, at::kFloat);
  }
  float* mine(const Team& team) { return scratch.data_ptr<float>() + team.id * per_thread; }
  int64_t per_thread;
  at::Tensor scratch, normed, packed, mixed;
};

struct ModuleWeights {
  const float *ln1_g, *ln1_b, *ln_limb_g = nullptr, *ln_limb_b = nullptr;
  ProductWeight in_w, kv_w, proj_w, fc1_w, fc2_w;
  const float *in_b, *kv_b = nullptr, *proj_b = nullptr;
  const float *bn_scale = nullptr, *bn_shift = nullptr, *adjacency = nullptr;
  float softmax_scale = 0.0f;  // attention: the module's own scale (qk_scale, or head width ** -0.5)
  const float *ln2_g, *ln2_b, *fc1_b, *fc2_b, *ls1, *ls2;
};

enum Mixer { kAttention, kGraph, kBone };

ModuleWeights take_module(WeightCursor& w, const Shape& s, Mixer mixer, bool spatial) {
  const int64_t D = s.D, nodes = spatial ? s.joints : s.frames;
  ModuleWeights m;
  m.ln1_g = w.take(D, "norm1.weight");
  m.ln1_b = w.take(D, "norm1.bias");
  if (mixer == kBone) {
    m.ln_limb_g = w.take(D, "norm1_limb.weight");
    m.ln_limb_b = w.take(D, "norm1_limb.bias");
    m.in_w = w.take_product(D, D, "mixer.qkv_q.weight^T");
    m.in_b = w.take(D, "mixer.qkv_q.bias");
    m.kv_w = w.take_product(D, 2 * D, "mixer.qkv_kv.weight^T");
    m.kv_b = w.take(2 * D, "mixer.qkv_kv.bias");
  } else if (mixer == kAttention) {
    m.in_w = w.take_product(D, 3 * D, "mixer.qkv.weight^T");
    m.in_b = w.take(3 * D, "mixer.qkv.bias");
  } else {
    m.in_w = w.take_product(D, 2 * D, "[mixer.U | mixer.V].weight^T");
    m.in_b = w.take(2 * D, "[mixer.U | mixer.V].bias");
    m.bn_scale = w.take(nodes, "mixer.batch_norm scale");
    m.bn_shift = w.take(nodes, "mixer.batch_norm shift");
    const bool fixed = spatial || !s.similarity;
    m.adjacency = w.take(fixed ? nodes * nodes : 0, "mixer.norm_adj");
  }
  if (mixer != kGraph) {
    m.softmax_scale = *w.take(1, "mixer.scale");
    m.proj_w = w.take_product(D, D, "mixer.proj.weight^T");
    m.proj_b = w.take(D, "mixer.proj.bias");
  }
  m.ln2_g = w.take(D, "norm2.weight");
  m.ln2_b = w.take(D, "norm2.bias");
  m.fc1_w = w.take_product(D, s.hidden, "mlp.fc1.weight^T");
  m.fc1_b = w.take(s.hidden, "mlp.fc1.bias");
  m.fc2_w = w.take_product(s.hidden, D, "mlp.fc2.weight^T");
  m.fc2_b = w.take(D, "mlp.fc2.bias");
  m.ls1 = w.take(D, "layer_scale_1");
  m.ls2 = w.take(D, "layer_scale_2");
  return m;
}

// One pre-norm residual unit, in place on x (rows x D): x += ls1 * mixer(norm1(x)); x += ls2 * mlp(norm2(x)).
// `start` (or nullptr) is copied into this thread's rows of x first: the branch's input. Run by the whole team;
// on return this thread's rows of x are final, other threads' may not be yet.
void run_module(const Kernels& k, const ModuleWeights& m, Mixer mixer, bool spatial, const Shape& s,
                Workspace& ws, float* x, const float* start, const float* limb, const Team& team) {
  const int D = s.D;
  float* normed = ws.normed.data_ptr<float>();
  float* packed = ws.packed.data_ptr<float>();
  float* mixed = ws.mixed.data_ptr<float>();
  const int64_t ld = mixer == kGraph ? 2 * D : 3 * D;
  const auto [row_begin, row_end] = team.share(s.rows, kRowUnit);
  // Pass 1 (this thread's rows): norm1, and the mixer's input products: qkv; q and kv (bone, kv from
  // norm1_limb(limb)); U|V.
  float* limb_normed = ws.mine(team);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kChunk) {
    const int64_t n = row_end - r0 < kChunk ? row_end - r0 : kChunk;
    if (start != nullptr) std::memcpy(x + r0 * D, start + r0 * D, n * D * sizeof(float));
    k.layer_norm_rows(x + r0 * D, D, n, D, m.ln1_g, m.ln1_b, normed + r0 * D, D);
    product(k, kStore, normed + r0 * D, D, n, m.in_w, m.in_b, packed + r0 * ld, ld, nullptr);
    if (mixer == kBone) {
      k.layer_norm_rows(limb + r0 * D, D, n, D, m.ln_limb_g, m.ln_limb_b, limb_normed, D);
      product(k, kStore, limb_normed, D, n, m.kv_w, m.kv_b, packed + r0 * ld + D, ld, nullptr);
    }
  }
  team.sync();
  // Pass 2 (this thread's sequences, which span every thread's rows): attention into `mixed`, or the graph mixer,
  // which adds its layer-scaled output to x.
  const auto [seq_begin, seq_end] = team.share(s.sequences(spatial));
  float* scratch = ws.mine(team) + kChunk * (s.D + s.hidden);
  for (int64_t i = seq_begin; i < seq_end; ++i) {
    const Sequence seq = s.sequence(spatial, i);
    if (mixer == kGraph) {
      k.graph_sequence(normed, packed, seq, D, m.adjacency, s.neighbours, m.bn_scale, m.bn_shift, m.ls1, x, scratch);
    } else {
      k.attend_sequence(packed, ld, seq, D, s.heads, m.softmax_scale, mixed, D, scratch);
    }
  }
  team.sync();
  // Pass 3 (this thread's rows): attention's output product and residual, then norm2 and the MLP with its residual.
  float* normed_chunk = ws.mine(team);
  float* hidden = normed_chunk + kChunk * D;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kChunk) {
    const int64_t n = row_end - r0 < kChunk ? row_end - r0 : kChunk;
    if (mixer != kGraph) {
      product(k, kResidual, mixed + r0 * D, D, n, m.proj_w, m.proj_b, x + r0 * D, D, m.ls1);
    }
    k.layer_norm_rows(x + r0 * D, D, n, D, m.ln2_g, m.ln2_b, normed_chunk, D);
    product(k, kGelu, normed_chunk, D, n, m.fc1_w, m.fc1_b, hidden, s.hidden, nullptr);
    product(k, kResidual, hidden, s.hidden, n, m.fc2_w, m.fc2_b, x + r0 * D, D, m.ls2);
  }
}

// Input normalisation (kasf.model.input_norm.canonical_input): pelvis-centred, divided by the confidence-weighted
// RMS distance of the joints from the pelvis, per frame or per window; returns the size each frame was divided by.
std::vector<float> canonical_input(const float* in, float* out, int64_t batch, int64_t frames, int64_t joints,
                                   int mode, int root) {
  std::vector<float> size(batch * frames, 1.0f);
  if (mode == kNormNone) {
    std::memcpy(out, in, batch * frames * joints * 3 * sizeof(float));
    return size;
  }
  for (int64_t b = 0; b < batch; ++b) {
    double window_squared = 0.0, window_weight = 0.0;
    for (int64_t t = 0; t < frames; ++t) {
      const float* f = in + (b * frames + t) * joints * 3;
      float squared = 0.0f, weight = 0.0f;
      for (int64_t j = 0; j < joints; ++j) {
        const float dx = f[j * 3] - f[root * 3], dy = f[j * 3 + 1] - f[root * 3 + 1];
        const float w = (f[j * 3 + 2] > 0.0f ? f[j * 3 + 2] : 0.0f) + kMinWeight;
        squared += (dx * dx + dy * dy) * w;
        weight += w;
      }
      size[b * frames + t] = std::max(std::sqrt(squared / weight), kMinSize);
      window_squared += squared;
      window_weight += weight;
    }
    if (mode == kNormWindow) {
      const float window_size = std::max((float)std::sqrt(window_squared / window_weight), kMinSize);
      for (int64_t t = 0; t < frames; ++t) size[b * frames + t] = window_size;
    }
    for (int64_t t = 0; t < frames; ++t) {
      const float* f = in + (b * frames + t) * joints * 3;
      float* o = out + (b * frames + t) * joints * 3;
      const float inv = size[b * frames + t];
      for (int64_t j = 0; j < joints; ++j) {
        o[j * 3] = (f[j * 3] - f[root * 3]) / inv;
        o[j * 3 + 1] = (f[j * 3 + 1] - f[root * 3 + 1]) / inv;
        o[j * 3 + 2] = f[j * 3 + 2];
      }
    }
  }
  return size;
}

// Token embedding: out[r] = in[r] (3 values) W + b + pos[joint of r].
void embed(const float* in, int64_t rows, int64_t joints, int D, const float* w, const float* b, const float* pos,
           float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = in + r * 3;
    const float* p = pos + (r % joints) * D;
    float* o = out + r * D;
    for (int c = 0; c < D; ++c) o[c] = x[0] * w[c] + x[1] * w[D + c] + x[2] * w[2 * D + c] + b[c] + p[c];
  }
}

struct LayerWeights {
  ModuleWeights att_s, att_t, graph_s, graph_t, bone_s, bone_t;
  const float *fusion_w, *fusion_b;
};

std::vector<LayerWeights> take_layers(WeightCursor& cursor, const Shape& s, const int64_t* config) {
  const bool anatomy = config[kAnatomy] != 0, adaptive = config[kAdaptive] != 0;
  const int n_branches = anatomy ? 3 : 2;
  std::vector<LayerWeights> layers(config[kLayers]);
  for (LayerWeights& w : layers) {
    w.att_s = take_module(cursor, s, kAttention, true);
    w.att_t = take_module(cursor, s, kAttention, false);
    w.graph_s = take_module(cursor, s, kGraph, true);
    w.graph_t = take_module(cursor, s, kGraph, false);
    if (anatomy) {
      w.bone_s = take_module(cursor, s, kBone, true);
      w.bone_t = take_module(cursor, s, kBone, false);
    }
    w.fusion_w = cursor.take(adaptive ? (int64_t)n_branches * n_branches * s.D : 0, "fusion.weight");
    w.fusion_b = cursor.take(adaptive ? n_branches : 0, "fusion.bias");
  }
  return layers;
}

// Every block, run by the whole team, in place on `stream`; `branch` holds a (rows, D) buffer per branch. Each
// block's branches start from this thread's rows of the stream (the first bone branch from the bone features), and
// its fusion writes this thread's rows back: rows no other thread touches between the modules' sequence passes.
void run_blocks(const Kernels& k, const std::vector<LayerWeights>& layers, const Shape& s, bool anatomy,
                Workspace& ws, float* const* branch, float* stream, const float* bone, const float* limb,
                const Team& team) {
  const int n_branches = anatomy ? 3 : 2;
  const auto [row_begin, row_end] = team.share(s.rows, kRowUnit);
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    const LayerWeights& w = layers[layer];
    run_module(k, w.att_s, kAttention, true, s, ws, branch[0], stream, nullptr, team);
    run_module(k, w.att_t, kAttention, false, s, ws, branch[0], nullptr, nullptr, team);
    run_module(k, w.graph_s, kGraph, true, s, ws, branch[1], stream, nullptr, team);
    run_module(k, w.graph_t, kGraph, false, s, ws, branch[1], nullptr, nullptr, team);
    if (anatomy) {
      run_module(k, w.bone_s, kBone, true, s, ws, branch[2], layer == 0 ? bone : stream, limb, team);
      run_module(k, w.bone_t, kBone, false, s, ws, branch[2], nullptr, limb, team);
    }
    const float* parts[3] = {branch[0] + row_begin * s.D, branch[1] + row_begin * s.D,
                             anatomy ? branch[2] + row_begin * s.D : nullptr};
    k.fuse_rows(parts, n_branches, row_end - row_begin, s.D, w.fusion_w, w.fusion_b, stream + row_begin * s.D);
  }
}

at::Tensor lift_cpu(const at::Tensor& window, const at::Tensor& weights, at::IntArrayRef sizes,
                    at::IntArrayRef config_ref, const std::optional<at::Tensor>& products) {
  TORCH_CHECK(config_ref.size() == kConfigSize, "kasf::lift_cpu: config needs ", (int)kConfigSize, " entries, got ",
              config_ref.size());
  const int64_t* config = config_ref.data();
  TORCH_CHECK(window.dim() == 4 && window.scalar_type() == at::kFloat && window.device().is_cpu(),
              "kasf::lift_cpu: the window must be a float32 CPU tensor (B, T, J, 3), got ", window.sizes(), " ",
              window.scalar_type());
  TORCH_CHECK(window.size(1) == config[kFrames] && window.size(2) == config[kJoints] && window.size(3) == 3,
              "kasf::lift_cpu: the window has shape ", window.sizes(), ", the model takes (B, ", config[kFrames], ", ",
              config[kJoints], ", 3)");
  Shape s;
  s.batch = window.size(0);
  s.frames = window.size(1);
  s.joints = window.size(2);
  s.rows = s.batch * s.frames * s.joints;
  s.D = (int)config[kDim];
  s.heads = (int)config[kHeads];
  s.hidden = (int)config[kHidden];
  s.similarity = config[kSimilarity] != 0;
  s.neighbours = (int)config[kNeighbours];
  const bool anatomy = config[kAnatomy] != 0;
  const int rep = (int)config[kRep], dim_out = (int)config[kOut];
  TORCH_CHECK(s.D % 16 == 0 && s.hidden % 16 == 0 && rep % 16 == 0 && s.heads > 0 && s.D % s.heads == 0,
              "kasf::lift_cpu: needs dim_feat, dim_rep and the MLP width multiples of 16 and heads dividing dim_feat; "
              "got dim_feat ", s.D, ", dim_rep ", rep, ", hidden ", s.hidden, ", heads ", s.heads);
  TORCH_CHECK(s.frames <= 256 && s.joints <= 256 && s.D / s.heads <= 256,
              "kasf::lift_cpu: sequences of at most 256 frames or joints, got ", s.frames, " and ", s.joints);
  TORCH_CHECK(!s.similarity || (s.neighbours >= 1 && s.neighbours <= 64 && s.neighbours <= s.frames),
              "kasf::lift_cpu: neighbour_num must be in [1, min(64, n_frames)], got ", s.neighbours);
  TORCH_CHECK(config[kInputNorm] >= kNormNone && config[kInputNorm] <= kNormWindow && config[kRoot] >= 0 &&
              config[kRoot] < s.joints, "kasf::lift_cpu: bad input_norm or root joint in the config");
  at::Tensor out = at::empty({s.batch, s.frames, s.joints, dim_out}, at::kFloat);
  if (s.rows == 0) return out;
  const Kernels& k = kernels();
  const int D = s.D;
  const at::Tensor input = window.contiguous();
  WeightCursor cursor(weights, sizes, products);

  // Input normalisation, anatomy features (the kasf::anatomy_features operator), limb fuser, embeddings.
  at::Tensor canonical = at::empty_like(input);
  const std::vector<float> size = canonical_input(input.data_ptr<float>(), canonical.data_ptr<float>(), s.batch,
                                                  s.frames, s.joints, (int)config[kInputNorm], (int)config[kRoot]);
  at::Tensor stream = at::empty({s.rows, D}, at::kFloat), bone, limb;
  const float* joints_w = cursor.take(3 * D, "joints_embed.weight^T");
  const float* joints_b = cursor.take(D, "joints_embed.bias");
  const float* joints_pos = cursor.take(s.joints * D, "pos_embed");
  embed(canonical.data_ptr<float>(), s.rows, s.joints, D, joints_w, joints_b, joints_pos, stream.data_ptr<float>());
  if (anatomy) {
    static const auto anatomy_op = c10::Dispatcher::singleton()
                                       .findSchemaOrThrow("kasf::anatomy_features", "")
                                       .typed<at::Tensor(const at::Tensor&)>();
    const at::Tensor bone_features = anatomy_op.call(canonical).contiguous();
    const int64_t limb_hidden = config[kLimbHidden], in_width = s.joints * 3, out_width = padded16(in_width);
    const float* bone_w = cursor.take(3 * D, "bone_embed.weight^T");
    const float* bone_b = cursor.take(D, "bone_embed.bias");
    const float* bone_pos = cursor.take(s.joints * D, "bone_pos_embed");
    const float* limb_w = cursor.take(3 * D, "limb_embed.weight^T");
    const float* limb_b = cursor.take(D, "limb_embed.bias");
    const float* limb_pos = cursor.take(s.joints * D, "limb_pos_embed");
    const ProductWeight fuser_w1 = cursor.take_product(in_width, limb_hidden, "bone_refusion packed fc1");
    const float* fuser_b1 = cursor.take(limb_hidden, "bone_refusion packed fc1 bias");
    const ProductWeight fuser_w2 = cursor.take_product(limb_hidden, out_width, "bone_refusion packed fc2 (padded)");
    const float* fuser_b2 = cursor.take(out_width, "bone_refusion packed fc2 bias (padded)");
    const int64_t frames_total = s.batch * s.frames;
    at::Tensor hidden = at::empty({frames_total, limb_hidden}, at::kFloat);
    at::Tensor fused = at::empty({frames_total, out_width}, at::kFloat);
    product(k, kGelu, canonical.data_ptr<float>(), in_width, frames_total, fuser_w1, fuser_b1, hidden.data_ptr<float>(),
            limb_hidden, nullptr);
    product(k, kStore, hidden.data_ptr<float>(), limb_hidden, frames_total, fuser_w2, fuser_b2, fused.data_ptr<float>(),
            out_width, nullptr);
    at::Tensor limb_features = at::empty({s.rows, 3}, at::kFloat);
    for (int64_t f = 0; f < frames_total; ++f)
      std::memcpy(limb_features.data_ptr<float>() + f * in_width, fused.data_ptr<float>() + f * out_width,
                  in_width * sizeof(float));
    bone = at::empty({s.rows, D}, at::kFloat);
    limb = at::empty({s.rows, D}, at::kFloat);
    embed(bone_features.data_ptr<float>(), s.rows, s.joints, D, bone_w, bone_b, bone_pos, bone.data_ptr<float>());
    embed(limb_features.data_ptr<float>(), s.rows, s.joints, D, limb_w, limb_b, limb_pos, limb.data_ptr<float>());
  }

  const std::vector<LayerWeights> layers = take_layers(cursor, s, config);
  // Head: LayerNorm, Linear(D, dim_rep) + tanh, Linear(dim_rep, dim_out) (padded to 16 columns), times the size.
  const float* norm_g = cursor.take(D, "norm.weight");
  const float* norm_b = cursor.take(D, "norm.bias");
  const ProductWeight rep_w = cursor.take_product(D, rep, "rep_logit.fc.weight^T");
  const float* rep_b = cursor.take(rep, "rep_logit.fc.bias");
  const int64_t out_pad = padded16(dim_out);
  const ProductWeight head_w = cursor.take_product(rep, out_pad, "head.weight^T (padded)");
  const float* head_b = cursor.take(out_pad, "head.bias (padded)");
  cursor.expect_end();

  const int threads = at::get_num_threads();
  Workspace ws(s, threads);
  std::vector<at::Tensor> branch_storage;
  float* branch[3] = {nullptr, nullptr, nullptr};
  for (int b = 0; b < (anatomy ? 3 : 2); ++b) {
    branch_storage.push_back(at::empty({s.rows, D}, at::kFloat));
    branch[b] = branch_storage.back().data_ptr<float>();
  }
  at::Tensor head_scratch = at::empty({threads, kChunk * (D + rep + out_pad)}, at::kFloat);
  float* x = stream.data_ptr<float>();
  float* y = out.data_ptr<float>();
  in_team([&](const Team& team) {
    run_blocks(k, layers, s, anatomy, ws, branch, x, anatomy ? bone.data_ptr<float>() : nullptr,
               anatomy ? limb.data_ptr<float>() : nullptr, team);
    // the head on this thread's rows, which the last fusion wrote
    const auto [row_begin, row_end] = team.share(s.rows, kRowUnit);
    float* normed = head_scratch.data_ptr<float>() + team.id * kChunk * (D + rep + out_pad);
    float* hidden = normed + kChunk * D;
    float* projected = hidden + kChunk * rep;
    for (int64_t r0 = row_begin; r0 < row_end; r0 += kChunk) {
      const int64_t n = row_end - r0 < kChunk ? row_end - r0 : kChunk;
      k.layer_norm_rows(x + r0 * D, D, n, D, norm_g, norm_b, normed, D);
      product(k, kTanh, normed, D, n, rep_w, rep_b, hidden, rep, nullptr);
      product(k, kStore, hidden, rep, n, head_w, head_b, projected, out_pad, nullptr);
      for (int64_t i = 0; i < n; ++i) {
        const float scale = size[(r0 + i) / s.joints];
        for (int c = 0; c < dim_out; ++c) y[(r0 + i) * dim_out + c] = projected[i * out_pad + c] * scale;
      }
    }
  });
  return out;
}

// ---- kasf::attention_rows: multi-head attention over a window's token rows, forward and backward, for training ----
//
// Why: in a compiled bf16 training step of the demo model on 2 CPU cores a third of the time went to attention
// (docs/training.md): sequences of 17 joints or 27 frames, heads of 8 channels, so every score row is a vector and
// a 1-lane tail, and the batched products are thousands of tiny GEMMs. Here a sequence's heads are done at once in
// float32 registers, the probabilities recomputed in the backward instead of stored.
//
// q, k, v: (B, T, J, C) float32 or bfloat16, channels contiguous, other strides free (slices of a packed Linear
// output need no copy). Sequences are a frame's joints (temporal false) or a joint's frames (temporal true); heads
// split C head-major (channel h * C / heads + i), as the model's Attention does. Results are contiguous, q's dtype;
// sums are float32 whatever the input dtype.

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 4, "attention_rows: ", name, " must be (B, T, J, C), got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), "attention_rows: ", name, " has shape ", t.sizes(), ", q has ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "attention_rows: ", name, " is ", t.scalar_type(), ", q is ",
              like.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "attention_rows: ", name, " must be on the CPU");
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, "attention_rows: ", name, "'s channels must be contiguous");
}

void check_attention_args(const at::Tensor& q, int64_t heads) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "attention_rows: q, k, v must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(q.size(3) % 16 == 0, "attention_rows: the channels (", q.size(3), ") must be a multiple of 16");
  TORCH_CHECK(heads > 0 && q.size(3) % heads == 0, "attention_rows: ", q.size(3), " channels do not split into ",
              heads, " heads");
}

// Runs `kernel` once per sequence with the token row pointers of `ins` (read) and `outs` (contiguous, written).
template <typename Kernel>
void for_each_sequence(const std::vector<const at::Tensor*>& ins, const std::vector<at::Tensor*>& outs,
                       bool temporal, Kernel kernel) {
  const at::Tensor& q = *ins[0];
  const int64_t T = q.size(1), J = q.size(2), C = q.size(3);
  const int64_t L = temporal ? T : J, groups = temporal ? J : T;
  const int64_t item = q.element_size();
  const size_t n_in = ins.size(), n_out = outs.size();
  const int64_t scratch_floats = kernels().attention_rows_scratch((int)L, (int)C);
  at::parallel_for(0, q.size(0) * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(scratch_floats);
    std::vector<const void*> in_rows(n_in * L);
    std::vector<void*> out_rows(n_out * L);
    for (int64_t s = begin; s < end; ++s) {
      const int64_t b = s / groups, g = s % groups;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t t = temporal ? i : g, j = temporal ? g : i;
        for (size_t a = 0; a < n_in; ++a) {
          const at::Tensor& x = *ins[a];
          in_rows[a * L + i] = static_cast<const char*>(x.const_data_ptr()) +
                               (b * x.stride(0) + t * x.stride(1) + j * x.stride(2)) * item;
        }
        for (size_t a = 0; a < n_out; ++a)
          out_rows[a * L + i] = static_cast<char*>(outs[a]->data_ptr()) + ((b * T + t) * J + j) * C * item;
      }
      kernel(in_rows.data(), out_rows.data(), scratch.data());
    }
  });
}

at::Tensor attention_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                          bool temporal, double scale) {
  check_rows(q, "q", q);
  check_rows(k, "k", q);
  check_rows(v, "v", q);
  check_attention_args(q, heads);
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  if (q.numel() == 0) return out;
  const Kernels& kn = kernels();
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const int L = (int)(temporal ? q.size(1) : q.size(2)), C = (int)q.size(3);
  for_each_sequence({&q, &k, &v}, {&out}, temporal, [&](const void* const* in, void* const* o, float* scratch) {
    kn.attention_rows_forward(in, bf16, L, C, (int)heads, (float)scale, o, scratch);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_rows_backward(const at::Tensor& grad, const at::Tensor& q,
                                                                      const at::Tensor& k, const at::Tensor& v,
                                                                      int64_t heads, bool temporal, double scale) {
  check_rows(q, "q", q);
  check_rows(k, "k", q);
  check_rows(v, "v", q);
  check_rows(grad, "grad", q);
  check_attention_args(q, heads);
  auto contiguous = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(q.sizes(), contiguous), dk = at::empty(q.sizes(), contiguous),
             dv = at::empty(q.sizes(), contiguous);
  if (q.numel() == 0) return {dq, dk, dv};
  const Kernels& kn = kernels();
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const int L = (int)(temporal ? q.size(1) : q.size(2)), C = (int)q.size(3);
  for_each_sequence({&q, &k, &v, &grad}, {&dq, &dk, &dv}, temporal,
                    [&](const void* const* in, void* const* o, float* scratch) {
                      kn.attention_rows_backward(in, bf16, L, C, (int)heads, (float)scale, o, scratch);
                    });
  return {dq, dk, dv};
}

std::string lift_cpu_kernels() { return kernels().name; }
std::string lift_cpu_bf16_kernels() { return bf16_kernel().name; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(kasf, m) {
  m.def("lift_cpu(Tensor window, Tensor weights, int[] sizes, int[] config, Tensor? products=None) -> Tensor");
  m.def("lift_cpu_kernels() -> str", &lift_cpu_kernels);
  m.def("lift_cpu_bf16_kernels() -> str", &lift_cpu_bf16_kernels);
  m.def("attention_rows(Tensor q, Tensor k, Tensor v, int heads, bool temporal, float scale) -> Tensor");
  m.def("attention_rows_backward(Tensor grad, Tensor q, Tensor k, Tensor v, int heads, bool temporal, float scale) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kasf, CPU, m) {
  m.impl("lift_cpu", &lift_cpu);
  m.impl("attention_rows", &attention_rows);
  m.impl("attention_rows_backward", &attention_rows_backward);
}

}  // namespace kasf
