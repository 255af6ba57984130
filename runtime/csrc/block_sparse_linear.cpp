#include "block_sparse_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <climits>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include <unistd.h>

#pragma GCC visibility push(hidden)

#include "simd_math.h"

namespace mlprune {
namespace {

struct Tile {
  const float* x;  // row m0, column 0
  int64_t ldx;
  const float* vals;
  const int64_t* cols;
  int64_t kb, ke;
  const float* bias;  // b floats of this row-block, or nullptr
  float* y;           // row m0, column r*b
  int64_t ldy;
  bool prefetch_w;  // a task's first tile: its row-block's W is not in cache yet
  Activation act;
  const float* res;  // residual at row m0, column r*b, or nullptr
  int64_t ldr;
  bool stream;  // write y around the caches (vector paths only; see Plan::Plan)
};
using TileFn = void (*)(const Tile&);

constexpr int kMaxMr = 12;
constexpr int kPackRows = 12;     // the AVX-512 tile height
constexpr int64_t kPackFlops = 512;  // per X element copied, for packing to pay (see run_part)
constexpr int64_t kWAhead = 2;  // blocks; 1-4 measured alike in a BERT-base run
// With a 2 MB L2 (Intel Xeon, 2 threads), streaming BERT-base's 1.5 MB Q/K/V outputs at batch 8 x 128
// took 5-16 % off those calls against the other kinds in the same rounds (ab_ort_library.py
// --by-kind); batch 1's outputs (at most 0.8 MB) stay on plain stores.
constexpr int64_t kColdOutputBytes = int64_t{1} << 20;
constexpr int kAvx2WideRows = 3;  // tile_avx2_wide's height: 12 accumulators of 16 ymm

// Output and residual lines of a tile, fetched before its FMAs: in a model they are cold (the
// next op's input, the block's input), and a store or load that misses after the FMAs stalls the
// tile.
template <int B>
inline void prefetch_outputs(const Tile& t, int rows) {
  for (int m = 0; m < rows; ++m)
    for (int j = 0; j < B; j += 16) {
      if (!t.stream) __builtin_prefetch(t.y + m * t.ldy + j, 1, 3);
      if (t.res) __builtin_prefetch(t.res + m * t.ldr + j, 0, 3);
    }
}

// ---- AVX-512: one tile = M rows x B outputs held in M*B/16 zmm accumulators ----
// P: X packed by pack_rows (a block's rows contiguous, every address an immediate offset).
template <int B, int M, bool P>
MLP_AVX512 void tile_avx512(const Tile& t) {
  constexpr int V = B / 16;
  __m512 acc[M][V];
  for (int v = 0; v < V; ++v) {
    const __m512 init = t.bias ? _mm512_loadu_ps(t.bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m][v] = init;
  }
  prefetch_outputs<B>(t, M);
  const int64_t ldx = t.ldx;
  // Rows are addressed as base[g] + (m % 4) * ldx: 3 bases + 3 strides instead of 12 row pointers.
  constexpr int G = (M + 3) / 4;
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const float* w = t.vals + k * B * B;
    const float* base[G];
    const float* packed = t.x + t.cols[k] * (kPackRows * B);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) base[g] = t.x + 4 * g * ldx + t.cols[k] * B;
    if (k + 1 < t.ke) {  // X rows of the next block: they live in L2 once in_features is large
      if (P) {
        const char* next = reinterpret_cast<const char*>(t.x + t.cols[k + 1] * (kPackRows * B));
#pragma GCC unroll 24
        for (int l = 0; l < M * B / 16; ++l) _mm_prefetch(next + 64 * l, _MM_HINT_T0);
      } else {
        const float* next = t.x + t.cols[k + 1] * B;
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) _mm_prefetch(reinterpret_cast<const char*>(next + m * ldx + 16 * v), _MM_HINT_T0);
      }
    }
    // W blocks ahead: on a row-block's first tile they come from DRAM (a model's weights
    // exceed the caches), and the hardware prefetcher alone leaves the FMAs waiting.
    const char* wpf = reinterpret_cast<const char*>(t.vals + std::min(k + kWAhead, t.ke - 1) * B * B);
    // Not unrolled: unrolling all 32 steps made GCC 12 spill accumulators to the stack at each
    // block's end (one thread, 768x768 at 1024 rows: 3-5 % slower; a BERT-base model 3 %).
#pragma GCC unroll 1
    for (int i = 0; i < B; ++i) {
      if (t.prefetch_w) _mm_prefetch(wpf + i * B * 4, _MM_HINT_T0);
      if (t.prefetch_w && B == 32) _mm_prefetch(wpf + i * B * 4 + 64, _MM_HINT_T0);
      __m512 wv[V];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(w + i * B + 16 * v);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const __m512 xb = _mm512_set1_ps(P ? packed[m * B + i] : base[m / 4][(m % 4) * ldx + i]);
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) acc[m][v] = _mm512_fmadd_ps(xb, wv[v], acc[m][v]);
      }
    }
  }
  // One unrolled pass, vector by vector: separate rolled GELU and residual loops kept acc on the
  // stack (in a batch-1 BERT-base model, O -7 % and FFN1 -6 % per call against them). y may be
  // the residual's own buffer: each vector's residual is read before that vector is stored.
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      __m512 y = acc[m][v];
      if (t.act == Activation::kGelu) y = gelu512(y);
      if (t.res) y = _mm512_add_ps(y, _mm512_loadu_ps(t.res + m * t.ldr + 16 * v));
      if (t.stream)
        _mm512_stream_ps(t.y + m * t.ldy + 16 * v, y);
      else
        _mm512_storeu_ps(t.y + m * t.ldy + 16 * v, y);
    }
}

// X rows [rows, in] -> [rows / kPackRows tiles][in / b column blocks][kPackRows][b].
MLP_AVX512 void pack_rows(const float* x, int64_t rows, int64_t in, int64_t b, float* dst) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* src = x + m * in;
    float* d = dst + (m / kPackRows) * kPackRows * in + (m % kPackRows) * b;
    for (int64_t c = 0; c < in; c += 16) _mm512_storeu_ps(d + (c / b) * kPackRows * b + c % b, _mm512_loadu_ps(src + c));
  }
}

// ---- AVX2: M rows x 16 outputs (2 ymm) per pass; b = 16 (b = 32 runs tile_avx2_wide below) ----
// GELU and residual in registers, W prefetched ahead and streaming stores as on AVX-512: against a
// scalar epilogue after the store, a 4-layer BERT-base-shaped model ran 1.13-1.19x faster (one thread,
// AVX2-only AMD EPYC, batch 1 and 8 x 128); streaming alone added 1-3 % of that.
template <int B, int M>
MLP_AVX2 void tile_avx2(const Tile& t) {
  prefetch_outputs<B>(t, M);
  const int64_t ldx = t.ldx;
  for (int j0 = 0; j0 < B; j0 += 16) {
    __m256 acc[M][2];
    for (int v = 0; v < 2; ++v) {
      const __m256 init =
          t.bias ? _mm256_loadu_ps(t.bias + j0 + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m][v] = init;
    }
    // The second pass finds W in cache: only the first fetches blocks ahead (see tile_avx512).
    const bool prefetch_w = t.prefetch_w && j0 == 0;
    for (int64_t k = t.kb; k < t.ke; ++k) {
      const float* w = t.vals + k * B * B + j0;
      const float* xc = t.x + t.cols[k] * B;
      const char* wpf = reinterpret_cast<const char*>(t.vals + std::min(k + kWAhead, t.ke - 1) * B * B);
#pragma GCC unroll 4
      for (int i = 0; i < B; ++i) {
        if (prefetch_w) _mm_prefetch(wpf + i * B * 4, _MM_HINT_T0);
        if (prefetch_w && B == 32) _mm_prefetch(wpf + i * B * 4 + 64, _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(w + i * B);
        const __m256 w1 = _mm256_loadu_ps(w + i * B + 8);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m256 xb = _mm256_set1_ps(xc[m * ldx + i]);  // a plain load ASan sees; still one vbroadcastss
          acc[m][0] = _mm256_fmadd_ps(xb, w0, acc[m][0]);
          acc[m][1] = _mm256_fmadd_ps(xb, w1, acc[m][1]);
        }
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
      for (int v = 0; v < 2; ++v) {
        __m256 y = acc[m][v];
        if (t.act == Activation::kGelu) y = gelu256(y);
        if (t.res) y = _mm256_add_ps(y, _mm256_loadu_ps(t.res + m * t.ldr + j0 + 8 * v));
        if (t.stream)
          _mm256_stream_ps(t.y + m * t.ldy + j0 + 8 * v, y);
        else
          _mm256_storeu_ps(t.y + m * t.ldy + j0 + 8 * v, y);
      }
  }
}

// b = 32 in one pass: M <= 3 rows x 32 outputs (4 ymm). At M = 3 the 12 accumulators, 3 broadcasts
// and a W vector fill the 16 ymm; each X line is read once per block instead of once per 16-output
// pass, which is what tile_avx2 waited on. Same summation order, so the same outputs as two passes.
// Against 6 x 16 in two passes, both builds in one process, one thread, caches flushed between
// calls, BERT-base's pruned shapes (density 0.4, N = 128 and 1024), both slot orders: ~4-5 % less time.
template <int M>
MLP_AVX2 void tile_avx2_wide(const Tile& t) {
  constexpr int B = 32;
  prefetch_outputs<B>(t, M);
  const int64_t ldx = t.ldx;
  __m256 acc[M][4];
  for (int v = 0; v < 4; ++v) {
    const __m256 init = t.bias ? _mm256_loadu_ps(t.bias + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[m][v] = init;
  }
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const float* w = t.vals + k * B * B;
    const float* xc = t.x + t.cols[k] * B;
    const char* wpf = reinterpret_cast<const char*>(t.vals + std::min(k + kWAhead, t.ke - 1) * B * B);
#pragma GCC unroll 4
    for (int i = 0; i < B; ++i) {
      if (t.prefetch_w) {
        _mm_prefetch(wpf + i * B * 4, _MM_HINT_T0);
        _mm_prefetch(wpf + i * B * 4 + 64, _MM_HINT_T0);
      }
      __m256 xb[M];
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) xb[m] = _mm256_set1_ps(xc[m * ldx + i]);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m256 wv = _mm256_loadu_ps(w + i * B + 8 * v);
#pragma GCC unroll 4
        for (int m = 0; m < M; ++m) acc[m][v] = _mm256_fmadd_ps(xb[m], wv, acc[m][v]);
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m256 y = acc[m][v];
      if (t.act == Activation::kGelu) y = gelu256(y);
      if (t.res) y = _mm256_add_ps(y, _mm256_loadu_ps(t.res + m * t.ldr + 8 * v));
      if (t.stream)
        _mm256_stream_ps(t.y + m * t.ldy + 8 * v, y);
      else
        _mm256_storeu_ps(t.y + m * t.ldy + 8 * v, y);
    }
}

// ---- portable fallback ----
template <int B, int M>
void tile_scalar(const Tile& t) {
  float acc[M][B];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < B; ++j) acc[m][j] = t.bias ? t.bias[j] : 0.0f;
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const float* w = t.vals + k * B * B;
    const float* xc = t.x + t.cols[k] * B;
    for (int i = 0; i < B; ++i)
      for (int m = 0; m < M; ++m) {
        const float xv = xc[m * t.ldx + i];
        for (int j = 0; j < B; ++j) acc[m][j] += xv * w[i * B + j];
      }
  }
  // Finished in acc before the store: y may be the residual's own buffer (see Plan::Plan).
  for (int m = 0; m < M; ++m) {
    epilogue_scalar(acc[m], t.res ? t.res + m * t.ldr : nullptr, B, t.act);
    std::memcpy(t.y + m * t.ldy, acc[m], sizeof(float) * B);
  }
}

// fn[isa][block == 32][rows] for rows in 1..kMaxMr; packed: the AVX-512 tiles on packed X
struct TileTable {
  TileFn fn[3][2][kMaxMr + 1] = {};
  TileFn packed[2][kMaxMr + 1] = {};
};

// AVX2 runs b = 32 as tile_avx2_wide (rows_per_tile gives it kAvx2WideRows rows at most).
template <int B, int M>
constexpr TileFn avx2_tile() {
  if constexpr (B == 32 && M <= kAvx2WideRows) return &tile_avx2_wide<M>;
  else return &tile_avx2<B, M>;
}

template <int B, int... Ms>
void fill(TileFn (&s)[kMaxMr + 1], TileFn (&a2)[kMaxMr + 1], TileFn (&a5)[kMaxMr + 1],
          TileFn (&p5)[kMaxMr + 1], std::integer_sequence<int, Ms...>) {
  ((s[Ms + 1] = &tile_scalar<B, Ms + 1>), ...);
  ((a2[Ms + 1] = avx2_tile<B, Ms + 1>()), ...);
  ((a5[Ms + 1] = &tile_avx512<B, Ms + 1, false>), ...);
  ((p5[Ms + 1] = &tile_avx512<B, Ms + 1, true>), ...);
}

const TileTable& tiles() {
  static const TileTable table = [] {
    TileTable t;
    const auto seq = std::make_integer_sequence<int, kMaxMr>{};
    fill<16>(t.fn[0][0], t.fn[1][0], t.fn[2][0], t.packed[0], seq);
    fill<32>(t.fn[0][1], t.fn[1][1], t.fn[2][1], t.packed[1], seq);
    return t;
  }();
  return table;
}

int64_t rows_per_tile(Isa isa, int64_t block) {
  switch (isa) {
    case Isa::kAvx512:
    case Isa::kAvx512Vnni: return 12;
    case Isa::kAvx2: return block == 32 ? kAvx2WideRows : 6;
    default: return 4;
  }
}

Isa detect() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
  if (avx512 && __builtin_cpu_supports("avx512vnni")) return Isa::kAvx512Vnni;
  if (avx512) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa initial_isa() {
  Isa isa = detect();
  if (const char* env = std::getenv("MLPRUNE_KERNEL_ISA")) {
    Isa wanted;
    if (parse_isa(env, &wanted)) isa = std::min(wanted, isa);
  }
  return isa;
}

std::atomic<int>& isa_state() {
  static std::atomic<int> state{static_cast<int>(initial_isa())};
  return state;
}

}  // namespace

int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v >= 128 * 1024 ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  return bytes;
}

Isa best_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() { return static_cast<Isa>(isa_state().load()); }

Isa set_isa(Isa isa) {
  const Isa chosen = std::min(isa, best_isa());
  isa_state().store(static_cast<int>(chosen));
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const std::string& name, Isa* out) {
  if (name == "auto") *out = best_isa();
  else if (name == "avx512vnni") *out = Isa::kAvx512Vnni;
  else if (name == "avx512") *out = Isa::kAvx512;
  else if (name == "avx2") *out = Isa::kAvx2;
  else if (name == "scalar") *out = Isa::kScalar;
  else return false;
  return true;
}

bool parse_activation(const std::string& name, Activation* out) {
  if (name == "none" || name.empty()) *out = Activation::kNone;
  else if (name == "gelu") *out = Activation::kGelu;
  else return false;
  return true;
}

std::string validate(const BsrLinearArgs& a, const std::vector<int64_t>& values_dims,
                     int64_t row_ptr_len, int64_t col_idx_len, int64_t bias_len) {
  const std::string shape =
      "weight [" + std::to_string(a.out_features) + ", " + std::to_string(a.in_features) + "]";
  if (values_dims.size() != 3 || values_dims[1] != values_dims[2])
    return "values must have shape [nnzb, b, b]";
  const int64_t b = values_dims[1];
  if (b != 16 && b != 32)
    return "block size " + std::to_string(b) + " is not supported (use 16 or 32)";
  if (a.out_features <= 0 || a.in_features <= 0 || a.out_features % b || a.in_features % b)
    return shape + " is not a whole number of " + std::to_string(b) + "x" + std::to_string(b) +
           " blocks; out and in features must be positive multiples of the block size";
  const int64_t rb = a.out_features / b, cb = a.in_features / b;
  if (row_ptr_len != rb + 1)
    return "row_ptr has " + std::to_string(row_ptr_len) + " entries, expected out_features/b+1 = " +
           std::to_string(rb + 1);
  if (col_idx_len != values_dims[0])
    return "col_idx has " + std::to_string(col_idx_len) + " entries but values holds " +
           std::to_string(values_dims[0]) + " blocks";
  if (bias_len >= 0 && bias_len != a.out_features)
    return "bias has " + std::to_string(bias_len) + " entries, expected " +
           std::to_string(a.out_features);
  if (a.row_ptr[0] != 0 || a.row_ptr[rb] != col_idx_len)
    return "row_ptr must start at 0 and end at nnzb = " + std::to_string(col_idx_len);
  for (int64_t r = 0; r < rb; ++r)
    if (a.row_ptr[r + 1] < a.row_ptr[r]) return "row_ptr must be non-decreasing";
  for (int64_t k = 0; k < col_idx_len; ++k)
    if (a.col_idx[k] < 0 || a.col_idx[k] >= cb)
      return "col_idx[" + std::to_string(k) + "] = " + std::to_string(a.col_idx[k]) +
             " is outside [0, " + std::to_string(cb) + ")";
  return "";
}

Plan::Plan(const BsrLinearArgs& args, int64_t max_parts) : a_(args), isa_(active_isa()) {
  const int64_t b = a_.block;
  row_blocks_ = a_.out_features / b;
  mr_ = rows_per_tile(isa_, b);
  // Keep one task's X rows (tile_rows_ x in) within half an L2: each W block a task loads is
  // reused tile_rows_ times (768x3072 at density 0.5, one thread: +15 % over a quarter of L2).
  const int64_t budget_rows = l2_bytes() / 2 / std::max<int64_t>(1, a_.in_features * 4);
  tile_rows_ = std::max<int64_t>(1, budget_rows / mr_) * mr_;
  tile_rows_ = std::min(tile_rows_, ((a_.rows + mr_ - 1) / mr_) * mr_);
  // An output (and a residual) larger than a core's L2 is cold: it comes from and goes to memory.
  // So is one over kColdOutputBytes where the L2 is larger: the next op rarely reads it at once
  // (attention reads Q after K and V are written).
  const bool cold = cold_output(a_.rows, a_.out_features);
  // A cold residual with a W that stays in L2: a task is one row tile across every row-block, so
  // the residual is read and y written whole rows in order, which the hardware prefetcher follows
  // (BERT-base's attention output at batch 8 x 128: -15 %). Without a residual, or with a warm
  // one, W's reloads from L2 cost more than this saves.
  if (a_.residual && cold && a_.nnzb * b * b * static_cast<int64_t>(sizeof(float)) <= l2_bytes() / 2)
    tile_rows_ = mr_;
  can_pack_ = isa_ >= Isa::kAvx512 && mr_ == kPackRows;
  // A plain store to a cold line first reads it from memory; that read and the write-back compete
  // with X and W for bandwidth. Streaming stores skip the read (BERT-base shapes at batch 8 x 128,
  // every output 1.5-6 MB: kernel time -10 % in a 12-layer model). A warm output stays in cache
  // for the next op, which reads it at once (batch 1, 0.2-0.8 MB: streaming was 3 % slower).
  // They need 64-byte lines: an aligned y suffices, as rows and blocks are 16 or 32 floats apart.
  // Written in place of the residual (ONNX Runtime may reuse its buffer), y's lines are already in
  // cache from the residual's read: plain stores hit them there, where streaming would evict them.
  stream_ = streams_output(isa_, a_.y, a_.residual, cold);
  bounds_ = balance_parts(a_.row_ptr, row_blocks_, a_.rows, tile_rows_, max_parts);
}

bool cold_output(int64_t rows, int64_t out_features) {
  return rows * out_features * static_cast<int64_t>(sizeof(float)) >= std::min(l2_bytes(), kColdOutputBytes);
}

bool streams_output(Isa isa, const float* y, const float* residual, bool cold) {
  return isa != Isa::kScalar && cold && y != residual && reinterpret_cast<uintptr_t>(y) % 64 == 0;
}

std::vector<int64_t> balance_parts(const int64_t* row_ptr, int64_t row_blocks, int64_t rows,
                                   int64_t tile_rows, int64_t max_parts) {
  const int64_t n_tiles = rows > 0 ? (rows + tile_rows - 1) / tile_rows : 0;
  const int64_t n_tasks = n_tiles * row_blocks;
  max_parts = std::max<int64_t>(1, std::min(max_parts, n_tasks));
  // Cost of a task ~ rows * (kept blocks + fixed init/store overhead).
  std::vector<double> prefix(n_tasks + 1, 0.0);
  for (int64_t t = 0, idx = 0; t < n_tiles; ++t) {
    const double tile = static_cast<double>(std::min(tile_rows, rows - t * tile_rows));
    for (int64_t r = 0; r < row_blocks; ++r, ++idx) {
      const double kept = static_cast<double>(row_ptr[r + 1] - row_ptr[r]);
      prefix[idx + 1] = prefix[idx] + tile * (kept + 0.25);
    }
  }
  std::vector<int64_t> bounds(max_parts + 1, n_tasks);
  bounds[0] = 0;
  for (int64_t p = 1; p < max_parts; ++p) {
    const double target = prefix[n_tasks] * static_cast<double>(p) / static_cast<double>(max_parts);
    const auto it = std::lower_bound(prefix.begin(), prefix.end(), target);
    bounds[p] = std::max(bounds[p - 1], static_cast<int64_t>(it - prefix.begin()));
  }
  return bounds;
}

void Plan::run_part(int64_t part) const {
  const int bi = a_.block == 32 ? 1 : 0;
  const int level = static_cast<int>(std::min(isa_, Isa::kAvx512));  // VNNI adds nothing to fp32
  const TileFn* table = tiles().fn[level][bi];
  const int64_t b = a_.block, in = a_.in_features;
  thread_local std::vector<float> packed;
  int64_t current_tile = -1;
  bool pack = false;
  for (int64_t idx = bounds_[part]; idx < bounds_[part + 1]; ++idx) {
    const int64_t t = idx / row_blocks_, r = idx % row_blocks_;
    const int64_t row_end = std::min(a_.rows, (t + 1) * tile_rows_);
    if (t != current_tile) {
      // Packing copies this tile's X rows once per part; it pays where each X element feeds
      // >= kPackFlops FLOPs of the row-blocks this part runs on them (+8-15 % on BERT-base FFN
      // and output shapes at N = 1024), not at low density (768x768, density 0.1: +50 % run time),
      // nor when many parts split few rows (each would copy them all).
      const int64_t r_end = std::min(bounds_[part + 1], (t + 1) * row_blocks_) - t * row_blocks_;
      pack = can_pack_ && (a_.row_ptr[r_end] - a_.row_ptr[r]) * b * b >= kPackFlops / 2 * in;
      table = pack ? tiles().packed[bi] : tiles().fn[level][bi];
      if (pack) {
        const int64_t rows = row_end - t * tile_rows_;
        packed.resize(static_cast<size_t>((rows + mr_ - 1) / mr_ * mr_ * in));
        pack_rows(a_.x + t * tile_rows_ * in, rows, in, b, packed.data());
      }
      current_tile = t;
    }
    Tile tile;
    tile.ldx = a_.in_features;
    tile.vals = a_.values;
    tile.cols = a_.col_idx;
    tile.kb = a_.row_ptr[r];
    tile.ke = a_.row_ptr[r + 1];
    tile.bias = a_.bias ? a_.bias + r * b : nullptr;
    tile.ldy = a_.out_features;
    tile.act = a_.activation;
    tile.ldr = a_.out_features;
    tile.stream = stream_;
    // The next task's W, into L2 while this task's later tiles run, so that its first tile
    // waits less on DRAM than the L1 prefetch two blocks ahead alone allows.
    const char* next_w = nullptr;
    int64_t next_lines = 0, chunk = 0;
    const int64_t n_micro = (row_end - t * tile_rows_ + mr_ - 1) / mr_;
    // Only on a part's first pass over the row-blocks: later passes find W in L2 already.
    if (idx + 1 < std::min(bounds_[part + 1], bounds_[part] + row_blocks_) && n_micro > 1) {
      const int64_t rn = (idx + 1) % row_blocks_;
      next_w = reinterpret_cast<const char*>(a_.values + a_.row_ptr[rn] * b * b);
      next_lines = (a_.row_ptr[rn + 1] - a_.row_ptr[rn]) * b * b * static_cast<int64_t>(sizeof(float)) / 64;
      chunk = (next_lines + n_micro - 2) / (n_micro - 1);
    }
    int64_t micro = 0;
    for (int64_t m0 = t * tile_rows_; m0 < row_end; m0 += mr_, ++micro) {
      const int64_t rows = std::min(mr_, row_end - m0);
      tile.prefetch_w = m0 == t * tile_rows_;
      if (next_w && micro > 0) {
        const int64_t l0 = (micro - 1) * chunk, l1 = std::min(next_lines, l0 + chunk);
        for (int64_t l = l0; l < l1; ++l) _mm_prefetch(next_w + 64 * l, _MM_HINT_T1);
      }
      tile.x = pack ? packed.data() + (m0 - t * tile_rows_) * in : a_.x + m0 * in;
      tile.y = a_.y + m0 * a_.out_features + r * b;
      tile.res = a_.residual ? a_.residual + m0 * a_.out_features + r * b : nullptr;
      table[rows](tile);
    }
  }
  if (stream_) _mm_sfence();  // streaming stores are weakly ordered: done before the caller joins
}

void Plan::run_all() const {
  for (int64_t p = 0; p < num_parts(); ++p) run_part(p);
}

}  // namespace mlprune

#pragma GCC visibility pop
