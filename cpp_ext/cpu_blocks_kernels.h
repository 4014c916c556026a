// The transformer blocks' CPU kernels: raw pointers and GCC/Clang vector types, no torch, no std templates.
//
// Why no torch here: this header is compiled several times, once per instruction set (cpu_blocks_avx512.cpp,
// cpu_blocks_avx2.cpp, cpu_blocks_generic.cpp), each under its own `#pragma GCC target`. Any inline function shared
// with other translation units (torch's, std's templates) could be merged by the linker with a copy compiled for
// another instruction set; keeping everything here in an anonymous namespace keeps each copy to its own file.
//
// The includer defines KASF_VLEN (floats per vector: 16, 8 or 4), KASF_ROWS (rows per product tile) and KASF_NS (the
// namespace that names the instruction set). The entry points are the functions of kasf_cpu::KASF_NS declared in
// cpu_blocks_kernels_api.h, with the layouts described there.

#include "cpu_vector_math.h"

namespace kasf_cpu {
namespace KASF_NS {
namespace {

constexpr int R = KASF_ROWS;

// One tile of `rows` (<= R) output rows: y = epilogue(x W + bias), W stored (K, N) row-major, N a multiple of V.
template <int E, int ROWS>
inline void product_tile(const float* x, int64_t ldx, int K, const float* w, const float* bias, int N, float* y,
                         int64_t ldy, const float* scale) {
  int c = 0;
  for (; c + 2 * V <= N; c += 2 * V) {
    vf acc0[ROWS], acc1[ROWS];
    const vf b0 = load(bias + c), b1 = load(bias + c + V);
    for (int i = 0; i < ROWS; ++i) {
      acc0[i] = b0;
      acc1[i] = b1;
    }
    for (int k = 0; k < K; ++k) {
      const vf w0 = load(w + (int64_t)k * N + c), w1 = load(w + (int64_t)k * N + c + V);
      for (int i = 0; i < ROWS; ++i) {
        const vf xi = splat(x[i * ldx + k]);
        acc0[i] += xi * w0;
        acc1[i] += xi * w1;
      }
    }
    for (int i = 0; i < ROWS; ++i) {
      finish<E>(y + i * ldy, c, acc0[i], scale);
      finish<E>(y + i * ldy, c + V, acc1[i], scale);
    }
  }
  for (; c < N; c += V) {
    vf acc[ROWS];
    for (int i = 0; i < ROWS; ++i) acc[i] = load(bias + c);
    for (int k = 0; k < K; ++k) {
      const vf w0 = load(w + (int64_t)k * N + c);
      for (int i = 0; i < ROWS; ++i) acc[i] += splat(x[i * ldx + k]) * w0;
    }
    for (int i = 0; i < ROWS; ++i) finish<E>(y + i * ldy, c, acc[i], scale);
  }
}

template <int E>
void product_rows_as(const float* x, int64_t ldx, int64_t rows, int K, const float* w, const float* bias, int N,
                     float* y, int64_t ldy, const float* scale) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) product_tile<E, R>(x + r * ldx, ldx, K, w, bias, N, y + r * ldy, ldy, scale);
  for (; r < rows; ++r) product_tile<E, 1>(x + r * ldx, ldx, K, w, bias, N, y + r * ldy, ldy, scale);
}

}  // namespace

void layer_norm_rows(const float* x, int64_t ldx, int64_t rows, int D, const float* gamma, const float* beta, float* y,
                     int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    vf s = splat(0.0f);
    for (int c = 0; c < D; c += V) s += load(xr + c);
    const float mean = hsum(s) / D;
    vf q = splat(0.0f);
    for (int c = 0; c < D; c += V) {
      const vf d = load(xr + c) - mean;
      q += d * d;
    }
    const float inv = 1.0f / __builtin_sqrtf(hsum(q) / D + 1e-5f);
    for (int c = 0; c < D; c += V) store(yr + c, (load(xr + c) - mean) * inv * load(gamma + c) + load(beta + c));
  }
}

void product_rows(int epilogue, const float* x, int64_t ldx, int64_t rows, int K, const float* w, const float* bias,
                  int N, float* y, int64_t ldy, const float* scale) {
  if (epilogue == kStore) {
    product_rows_as<kStore>(x, ldx, rows, K, w, bias, N, y, ldy, scale);
  } else if (epilogue == kGelu) {
    product_rows_as<kGelu>(x, ldx, rows, K, w, bias, N, y, ldy, scale);
  } else if (epilogue == kTanh) {
    product_rows_as<kTanh>(x, ldx, rows, K, w, bias, N, y, ldy, scale);
  } else {
    product_rows_as<kResidual>(x, ldx, rows, K, w, bias, N, y, ldy, scale);
  }
}

namespace {

// Blocked inner loops. Each keeps N independent accumulators: one FMA chain per accumulator would wait ~4 cycles
// per step (the latency), N chains fill the FMA units. All "broadcast a scalar, multiply a vector" products.

// out[n] (n < N) = sum_c a_n[c] * B[c] for vectors B[c] = b + c * ldb: the scalars of N rows against one vector
// column. Rows a_n = a + n * lda.
template <int N>
inline void rows_times_column(const float* const* a, int K, const float* b, int64_t ldb, float* out, int64_t ldo) {
  vf acc[N];
  for (int n = 0; n < N; ++n) acc[n] = splat(0.0f);
  for (int c = 0; c < K; ++c) {
    const vf column = load(b + c * ldb);
    for (int n = 0; n < N; ++n) acc[n] += splat(a[n][c]) * column;
  }
  for (int n = 0; n < N; ++n) store(out + n * ldo, acc[n]);
}

// The same for any count: blocks of 8, then 4, then single rows.
inline void rows_times_column_any(const float* const* a, int rows, int K, const float* b, int64_t ldb, float* out,
                                  int64_t ldo) {
  int n = 0;
  for (; n + 8 <= rows; n += 8) rows_times_column<8>(a + n, K, b, ldb, out + n * ldo, ldo);
  for (; n + 4 <= rows; n += 4) rows_times_column<4>(a + n, K, b, ldb, out + n * ldo, ldo);
  for (; n < rows; ++n) rows_times_column<1>(a + n, K, b, ldb, out + n * ldo, ldo);
}

// The k-th largest of values[0, L), duplicates counted (top-k's last value), by taking the row's maximum and
// removing every lane equal to it until k values are gone: at most k passes over Lp / V vectors, no branches per
// value. values[] (Lp floats) is overwritten.
inline float kth_largest(float* values, int L, int Lp, int k) {
  const float lowest = -3.0e38f;
  for (int j = L; j < Lp; ++j) values[j] = lowest;
  for (;;) {
    vf m = load(values);
    for (int u = V; u < Lp; u += V) m = vmax(m, load(values + u));
    const float top = hmax(m);
    vf equal = splat(0.0f);
    for (int u = 0; u < Lp; u += V) equal += load(values + u) == top ? splat(1.0f) : splat(0.0f);
    const int count = (int)hsum(equal);
    if (count >= k || top == lowest) return top;
    k -= count;
    for (int u = 0; u < Lp; u += V) {
      const vf v = load(values + u);
      store(values + u, v == top ? splat(lowest) : v);
    }
  }
}

}  // namespace

void attend_sequence(const float* qkv, int64_t ld, const Sequence& seq, int D, int heads, float softmax_scale,
                     float* out, int64_t ldo, float* scratch) {
  // Vectors run over the queries i (padded to Lp lanes); keys and values are broadcast one scalar at a time, so
  // every loop is a plain vector FMA whatever the head width. scratch holds D * Lp floats each for q (scaled) and
  // v, transposed, L * Lp for the scores, transposed, and D * Lp for the output, transposed. Sequences are at most
  // 256 tokens long, heads at most 256 channels wide.
  const int L = seq.length, Lp = (L + V - 1) / V * V, d = D / heads;
  float* qT = scratch;
  float* vT = qT + (int64_t)D * Lp;
  float* sT = vT + (int64_t)D * Lp;
  float* oT = sT + (int64_t)L * Lp;
  const float* keys[256];
  const float* values_t[256];
  // q (scaled) and v, transposed a V x V block at a time; zero past L
  for (int i0 = 0; i0 < Lp; i0 += V) {
    for (int c0 = 0; c0 < D; c0 += V) {
      vf block[V];
      for (int r = 0; r < V; ++r)
        block[r] = i0 + r < L ? load(qkv + row_of(seq, i0 + r) * ld + c0) * softmax_scale : splat(0.0f);
      transpose(block);
      for (int c = 0; c < V; ++c) store(qT + (int64_t)(c0 + c) * Lp + i0, block[c]);
      for (int r = 0; r < V; ++r)
        block[r] = i0 + r < L ? load(qkv + row_of(seq, i0 + r) * ld + 2 * D + c0) : splat(0.0f);
      transpose(block);
      for (int c = 0; c < V; ++c) store(vT + (int64_t)(c0 + c) * Lp + i0, block[c]);
    }
  }
  for (int h = 0; h < heads; ++h) {
    const int c0 = h * d;
    for (int j = 0; j < L; ++j) keys[j] = qkv + row_of(seq, j) * ld + D + c0;
    // scores, transposed: sT[j][i] = <k_j, q_i> * scale
    for (int u = 0; u < Lp; u += V) rows_times_column_any(keys, L, d, qT + c0 * Lp + u, Lp, sT + u, Lp);
    // softmax over j for every query lane (unnormalised; 1 / sum folds into the output)
    for (int u = 0; u < Lp; u += V) {
      vf m0 = load(sT + u), m1 = m0;
      int j = 1;
      for (; j + 1 < L; j += 2) {
        m0 = vmax(m0, load(sT + j * Lp + u));
        m1 = vmax(m1, load(sT + (j + 1) * Lp + u));
      }
      if (j < L) m0 = vmax(m0, load(sT + j * Lp + u));
      const vf m = vmax(m0, m1);
      vf z0 = splat(0.0f), z1 = splat(0.0f);
      for (j = 0; j + 1 < L; j += 2) {
        const vf e0 = vexp(load(sT + j * Lp + u) - m), e1 = vexp(load(sT + (j + 1) * Lp + u) - m);
        store(sT + j * Lp + u, e0);
        store(sT + (j + 1) * Lp + u, e1);
        z0 += e0;
        z1 += e1;
      }
      if (j < L) {
        const vf e = vexp(load(sT + j * Lp + u) - m);
        store(sT + j * Lp + u, e);
        z0 += e;
      }
      store(oT + c0 * Lp + u, 1.0f / (z0 + z1));  // kept in the output's first row until the products below
    }
    // outputs, transposed: oT[c][i] = sum_j v_j[c] p_ji, for the head's d channels at once (the values read as
    // rows of their transpose: value channel c of token j is values_t[c][j]). 1 / sum is read before the products
    // overwrite the row it was kept in.
    for (int c = 0; c < d; ++c) values_t[c] = vT + (int64_t)(c0 + c) * Lp;
    for (int u = 0; u < Lp; u += V) {
      const vf inv = load(oT + c0 * Lp + u);
      rows_times_column_any(values_t, d, L, sT + u, Lp, oT + c0 * Lp + u, Lp);
      for (int c = 0; c < d; ++c) store(oT + (c0 + c) * Lp + u, load(oT + (c0 + c) * Lp + u) * inv);
    }
  }
  for (int i0 = 0; i0 < L; i0 += V) {  // the output rows back from oT, a V x V block at a time
    for (int c0 = 0; c0 < D; c0 += V) {
      vf block[V];
      for (int c = 0; c < V; ++c) block[c] = load(oT + (int64_t)(c0 + c) * Lp + i0);
      transpose(block);
      for (int r = 0; r < V && i0 + r < L; ++r) store(out + row_of(seq, i0 + r) * ldo + c0, block[r]);
    }
  }
}

void graph_sequence(const float* nodes, const float* uv, const Sequence& seq, int D, const float* adjacency,
                    int neighbours, const float* bn_scale, const float* bn_shift, const float* layer_scale, float* x,
                    float* scratch) {
  // out_i = relu(n_i + bn_i(sum_j A_ij V_j + U_i)); x_i += layer_scale * out_i. A is the fixed normalised graph, or
  // (adjacency == nullptr) the similarity graph: j is i's neighbour when <n_i, n_j> reaches the row's k-th largest
  // value (ties included, as top-k's threshold compares), normalised D^-1/2 A D^-1/2.
  // scratch: L * L + L + (D + L) * Lp + 2 * L * D floats.
  const int L = seq.length;
  const float* adj = adjacency;
  if (adj == nullptr) {
    float* a = scratch;
    float* inv_sqrt_degree = scratch + L * L;
    // Similarities row by row, vectors over j: the nodes go in transposed (D x Lp) once per sequence.
    const int Lp = (L + V - 1) / V * V;
    float* nT = inv_sqrt_degree + L;
    float* row = nT + (int64_t)D * Lp;  // L x Lp similarities
    for (int c = 0; c < D; ++c)
      for (int j = L; j < Lp; ++j) nT[c * Lp + j] = 0.0f;
    for (int j = 0; j < L; ++j) {
      const float* nj = nodes + row_of(seq, j) * D;
      for (int c = 0; c < D; ++c) nT[c * Lp + j] = nj[c];
    }
    const float* node_rows[256];
    for (int i = 0; i < L; ++i) node_rows[i] = nodes + row_of(seq, i) * D;
    for (int u = 0; u < Lp; u += V) rows_times_column_any(node_rows, L, D, nT + u, Lp, row + u, Lp);
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) a[i * L + j] = row[i * Lp + j];
    for (int i = 0; i < L; ++i) {
      const float threshold = kth_largest(row + i * Lp, L, Lp, neighbours);
      float degree = 0.0f;
      for (int j = 0; j < L; ++j) {
        a[i * L + j] = a[i * L + j] >= threshold ? 1.0f : 0.0f;
        degree += a[i * L + j];
      }
      inv_sqrt_degree[i] = 1.0f / __builtin_sqrtf(degree);
    }
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) a[i * L + j] *= inv_sqrt_degree[i] * inv_sqrt_degree[j];
    adj = a;
  }
  // agg_i = sum_j A_ij V_j: the adjacency's rows against the V rows gathered into one (L, D) block
  float* v_block = scratch + L * L + L + (int64_t)(D + L) * ((L + V - 1) / V * V);  // after the similarity's
  float* agg = v_block + (int64_t)L * D;
  for (int j = 0; j < L; ++j) {
    const float* v = uv + row_of(seq, j) * 2 * D + D;
    for (int c = 0; c < D; ++c) v_block[j * D + c] = v[c];
  }
  const float* adj_rows[256];
  for (int i = 0; i < L; ++i) adj_rows[i] = adj + i * L;
  for (int c = 0; c < D; c += V) rows_times_column_any(adj_rows, L, L, v_block + c, D, agg + c, D);
  for (int i = 0; i < L; ++i) {
    const int64_t ri = row_of(seq, i);
    const float* u = uv + ri * 2 * D;
    const float* n = nodes + ri * D;
    float* xi = x + ri * D;
    for (int c = 0; c < D; c += V) {
      vf out = load(n + c) + (load(agg + i * D + c) + load(u + c)) * bn_scale[i] + bn_shift[i];
      out = vmax(out, splat(0.0f));
      store(xi + c, load(xi + c) + load(layer_scale + c) * out);
    }
  }
}

void fuse_rows(const float* const* branches, int n_branches, int64_t rows, int D, const float* weight,
               const float* bias, float* out) {
  // Adaptive fusion: softmax over branches of Linear(concat(branches)), then the weighted sum; weight == nullptr
  // means the plain mean (use_adaptive_fusion off).
  for (int64_t r = 0; r < rows; ++r) {
    float mix[3];
    if (weight != nullptr) {
      float logit[3], largest = -3.0e38f;
      for (int k = 0; k < n_branches; ++k) {
        vf s = splat(0.0f);
        for (int b = 0; b < n_branches; ++b)
          for (int c = 0; c < D; c += V)
            s += load(branches[b] + r * D + c) * load(weight + (int64_t)k * n_branches * D + b * D + c);
        logit[k] = hsum(s) + bias[k];
        largest = logit[k] > largest ? logit[k] : largest;
      }
      float total = 0.0f;
      for (int k = 0; k < n_branches; ++k) total += (mix[k] = __builtin_expf(logit[k] - largest));
      for (int k = 0; k < n_branches; ++k) mix[k] /= total;
    } else {
      for (int k = 0; k < n_branches; ++k) mix[k] = 1.0f / n_branches;
    }
    for (int c = 0; c < D; c += V) {
      vf acc = load(branches[0] + r * D + c) * mix[0];
      for (int b = 1; b < n_branches; ++b) acc += load(branches[b] + r * D + c) * mix[b];
      store(out + r * D + c, acc);
    }
  }
}

// ---- Training attention (kasf::attention_rows): one sequence, all heads, forward or backward ----
// A sequence comes as token row pointers (C channels each, float32 or bf16). Its q, k, v are gathered transposed
// into float32 (channel c of token i at [c * Lp + i], zero for i >= L, Lp = L rounded up to 16) a V x V block at a
// time. Vectors then run over the queries i, so the softmax over the keys j is plain vector arithmetic (no lane
// reductions); the two products that sum over the queries (dK, dV) read P and dS transposed back.
namespace {

typedef uint16_t vh __attribute__((vector_size(KASF_VLEN * 2), aligned(2), may_alias));
typedef uint32_t vu __attribute__((vector_size(KASF_VLEN * 4), aligned(4), may_alias));

inline vf load_any(const void* row, bool bf16, int c0) {
  if (!bf16) return load(static_cast<const float*>(row) + c0);
  const vh h = *reinterpret_cast<const vh*>(static_cast<const uint16_t*>(row) + c0);
  return (vf)(__builtin_convertvector(h, vu) << 16);
}

inline void store_any(void* row, bool bf16, int c0, vf v) {
  if (!bf16) {
    store(static_cast<float*>(row) + c0, v);
    return;
  }
  const vu bits = (vu)v;
  const vu rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;  // round to nearest even
  const vu nan = (vu)(v != v);                                          // NaN stays a (quiet) NaN
  *reinterpret_cast<vh*>(static_cast<uint16_t*>(row) + c0) =
      __builtin_convertvector((rounded & ~nan) | (nan & 0x7FC0u), vh);
}

// dst[c * Lp + i] = rows[i][c] (zero for L <= i < Lp); C a multiple of V.
inline void gather_transposed(const void* const* rows, bool bf16, int L, int Lp, int C, float* dst) {
  for (int i0 = 0; i0 < Lp; i0 += V) {
    for (int c0 = 0; c0 < C; c0 += V) {
      vf block[V];
      for (int r = 0; r < V; ++r) block[r] = i0 + r < L ? load_any(rows[i0 + r], bf16, c0) : splat(0.0f);
      transpose(block);
      for (int c = 0; c < V; ++c) store(dst + (int64_t)(c0 + c) * Lp + i0, block[c]);
    }
  }
}

// rows[i][c] = src[c * Lp + i] for i < L.
inline void scatter_transposed(const float* src, int L, int Lp, int C, bool bf16, void* const* rows) {
  for (int i0 = 0; i0 < L; i0 += V) {
    for (int c0 = 0; c0 < C; c0 += V) {
      vf block[V];
      for (int c = 0; c < V; ++c) block[c] = load(src + (int64_t)(c0 + c) * Lp + i0);
      transpose(block);
      for (int r = 0; r < V && i0 + r < L; ++r) store_any(rows[i0 + r], bf16, c0, block[r]);
    }
  }
}

// N sums at once (independent FMA chains, where one chain would wait on each FMA's latency):
// acc[n] = sum over c in [c0, c0 + d) of a[c * Lp + t0 + n] * b[c * Lp + u .. + V).
template <int N>
inline void column_products(const float* a, const float* b, int t0, int c0, int d, int Lp, int u, vf (&acc)[N]) {
  for (int n = 0; n < N; ++n) acc[n] = splat(0.0f);
  for (int c = c0; c < c0 + d; ++c) {
    const vf bv = load(b + (int64_t)c * Lp + u);
    for (int n = 0; n < N; ++n) acc[n] += splat(a[(int64_t)c * Lp + t0 + n]) * bv;
  }
}

// out[t * Lp + u ..] = scale * sum over the head's channels of a[c * Lp + t] * b[c * Lp + u ..], t < L; rows
// t >= L of out untouched.
inline void head_products(const float* a, const float* b, int L, int Lp, int c0, int d, float scale, float* out) {
  for (int u = 0; u < Lp; u += V) {
    int t = 0;
    for (; t + 8 <= L; t += 8) {
      vf acc[8];
      column_products<8>(a, b, t, c0, d, Lp, u, acc);
      for (int n = 0; n < 8; ++n) store(out + (int64_t)(t + n) * Lp + u, acc[n] * scale);
    }
    for (; t < L; ++t) {
      vf acc[1];
      column_products<1>(a, b, t, c0, d, Lp, u, acc);
      store(out + (int64_t)t * Lp + u, acc[0] * scale);
    }
  }
}

// pT[j * Lp + i] = softmax over j of scale * <k_j, q_i> within the head's channels c0..c0+d; rows j >= L zero.
inline void head_probabilities(const float* qT, const float* kT, int L, int Lp, int c0, int d, float scale,
                               float* pT) {
  head_products(kT, qT, L, Lp, c0, d, scale, pT);
  for (int u = 0; u < Lp; u += V) {
    vf m = load(pT + u);
    for (int j = 1; j < L; ++j) m = vmax(m, load(pT + (int64_t)j * Lp + u));
    vf z0 = splat(0.0f), z1 = splat(0.0f);
    int j = 0;
    for (; j + 2 <= L; j += 2) {
      const vf e0 = vexp(load(pT + (int64_t)j * Lp + u) - m), e1 = vexp(load(pT + (int64_t)(j + 1) * Lp + u) - m);
      store(pT + (int64_t)j * Lp + u, e0);
      store(pT + (int64_t)(j + 1) * Lp + u, e1);
      z0 += e0;
      z1 += e1;
    }
    if (j < L) {
      const vf e = vexp(load(pT + (int64_t)j * Lp + u) - m);
      store(pT + (int64_t)j * Lp + u, e);
      z0 += e;
    }
    const vf inv = 1.0f / (z0 + z1);
    for (j = 0; j < L; ++j) store(pT + (int64_t)j * Lp + u, load(pT + (int64_t)j * Lp + u) * inv);
  }
  for (int j = L; j < Lp; ++j)
    for (int u = 0; u < Lp; u += V) store(pT + (int64_t)j * Lp + u, splat(0.0f));
}

// dst = src transposed, both Lp x Lp row-major, Lp a multiple of V.
inline void transpose_square(const float* src, float* dst, int Lp) {
  for (int bi = 0; bi < Lp; bi += V) {
    for (int bj = 0; bj < Lp; bj += V) {
      vf block[V];
      for (int r = 0; r < V; ++r) block[r] = load(src + (int64_t)(bi + r) * Lp + bj);
      transpose(block);
      for (int r = 0; r < V; ++r) store(dst + (int64_t)(bj + r) * Lp + bi, block[r]);
    }
  }
}

// outT[c][lanes] = sum over t < n of scalars[c * Lp + t] * rows[t * Lp + lanes], for the head's d channels, eight
// channels at a time (eight independent FMA chains, each row read once for them).
template <int N>
inline void weighted_rows_block(const float* scalars, const float* rows, int n, int Lp, int c, int u, float* outT) {
  vf acc[N];
  for (int m = 0; m < N; ++m) acc[m] = splat(0.0f);
  for (int t = 0; t < n; ++t) {
    const vf r = load(rows + (int64_t)t * Lp + u);
    for (int m = 0; m < N; ++m) acc[m] += splat(scalars[(int64_t)(c + m) * Lp + t]) * r;
  }
  for (int m = 0; m < N; ++m) store(outT + (int64_t)(c + m) * Lp + u, acc[m]);
}

inline void scalar_weighted_rows(const float* scalars, const float* rows, int n, int Lp, int c0, int d, float* outT) {
  for (int u = 0; u < Lp; u += V) {
    int c = c0;
    for (; c + 8 <= c0 + d; c += 8) weighted_rows_block<8>(scalars, rows, n, Lp, c, u, outT);
    for (; c < c0 + d; ++c) weighted_rows_block<1>(scalars, rows, n, Lp, c, u, outT);
  }
}

inline int padded_length(int L) { return (L + 15) / 16 * 16; }

}  // namespace

int64_t attention_rows_scratch(int L, int C) {
  const int64_t Lp = padded_length(L);
  return 7 * (int64_t)C * Lp + 4 * Lp * Lp;
}

void attention_rows_forward(const void* const* rows, bool bf16, int L, int C, int heads, float scale,
                            void* const* out_rows, float* scratch) {
  const int d = C / heads, Lp = padded_length(L);
  float* qT = scratch;
  float* kT = qT + (int64_t)C * Lp;
  float* vT = kT + (int64_t)C * Lp;
  float* oT = vT + (int64_t)C * Lp;
  float* pT = oT + (int64_t)C * Lp;
  gather_transposed(rows, bf16, L, Lp, C, qT);
  gather_transposed(rows + L, bf16, L, Lp, C, kT);
  gather_transposed(rows + 2 * L, bf16, L, Lp, C, vT);
  for (int c0 = 0; c0 < C; c0 += d) {
    head_probabilities(qT, kT, L, Lp, c0, d, scale, pT);
    scalar_weighted_rows(vT, pT, L, Lp, c0, d, oT);  // oT[c][i] = sum_j v_j[c] p_ji
  }
  scatter_transposed(oT, L, Lp, C, bf16, out_rows);
}

void attention_rows_backward(const void* const* rows, bool bf16, int L, int C, int heads, float scale,
                             void* const* out_rows, float* scratch) {
  // dP = dO V^T, dS = P * (dP - rowsum(P * dP)) * scale, dQ = dS K, dK = dS^T Q, dV = P^T dO; P recomputed.
  const int d = C / heads, Lp = padded_length(L);
  const int64_t block = (int64_t)C * Lp, square = (int64_t)Lp * Lp;
  float* qT = scratch;
  float* kT = qT + block;
  float* vT = kT + block;
  float* doT = vT + block;
  float* dqT = doT + block;
  float* dkT = dqT + block;
  float* dvT = dkT + block;
  float* pT = dvT + block;
  float* dsT = pT + square;
  float* p = dsT + square;
  float* ds = p + square;
  gather_transposed(rows, bf16, L, Lp, C, qT);
  gather_transposed(rows + L, bf16, L, Lp, C, kT);
  gather_transposed(rows + 2 * L, bf16, L, Lp, C, vT);
  gather_transposed(rows + 3 * L, bf16, L, Lp, C, doT);
  for (int c0 = 0; c0 < C; c0 += d) {
    head_probabilities(qT, kT, L, Lp, c0, d, scale, pT);
    head_products(vT, doT, L, Lp, c0, d, 1.0f, dsT);  // dP^T[j][i] = <v_j, do_i>
    for (int u = 0; u < Lp; u += V) {
      vf delta0 = splat(0.0f), delta1 = splat(0.0f);
      int j = 0;
      for (; j + 2 <= L; j += 2) {
        delta0 += load(pT + (int64_t)j * Lp + u) * load(dsT + (int64_t)j * Lp + u);
        delta1 += load(pT + (int64_t)(j + 1) * Lp + u) * load(dsT + (int64_t)(j + 1) * Lp + u);
      }
      if (j < L) delta0 += load(pT + (int64_t)j * Lp + u) * load(dsT + (int64_t)j * Lp + u);
      const vf delta = delta0 + delta1;
      for (j = 0; j < L; ++j) {
        const vf dp = load(dsT + (int64_t)j * Lp + u);
        store(dsT + (int64_t)j * Lp + u, load(pT + (int64_t)j * Lp + u) * (dp - delta) * scale);
      }
    }
    for (int j = L; j < Lp; ++j)
      for (int u = 0; u < Lp; u += V) store(dsT + (int64_t)j * Lp + u, splat(0.0f));
    transpose_square(pT, p, Lp);
    transpose_square(dsT, ds, Lp);
    scalar_weighted_rows(kT, dsT, L, Lp, c0, d, dqT);  // dqT[c][i] = sum_j k_j[c] ds_ji
    scalar_weighted_rows(qT, ds, L, Lp, c0, d, dkT);   // dkT[c][j] = sum_i q_i[c] ds_ij
    scalar_weighted_rows(doT, p, L, Lp, c0, d, dvT);   // dvT[c][j] = sum_i do_i[c] p_ij
  }
  scatter_transposed(dqT, L, Lp, C, bf16, out_rows);
  scatter_transposed(dkT, L, Lp, C, bf16, out_rows + L);
  scatter_transposed(dvT, L, Lp, C, bf16, out_rows + 2 * L);
}

}  // namespace KASF_NS
}  // namespace kasf_cpu
