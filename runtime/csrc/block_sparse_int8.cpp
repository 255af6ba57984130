// The int8 path of the block-sparse kernel (layout and arithmetic in block_sparse_linear.h): X is
// quantized per row inside the op, the kept blocks are summed exactly in int32 by the widest
// dot-product instruction the CPU has, and each output tile is dequantized, biased, GELU'd and
// added to its residual in registers before the one store, as the fp32 path does.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "block_sparse_linear.h"
#include "simd_math.h"

#pragma GCC visibility push(hidden)

namespace mlprune {
namespace {

struct Int8Tile {
  const uint8_t* x;  // quantized row m0, column 0
  int64_t ldx;
  const int8_t* vals;
  const int64_t* cols;
  int64_t kb, ke;
  const float* x_scale;  // rows m0.. (unused in raw mode)
  const int32_t* x_zp;
  const float* w_scale;  // columns r*b..
  const int32_t* w_sum;
  const float* bias;  // or nullptr
  float* y;           // row m0, column r*b
  int32_t* y_raw;     // raw mode: the int32 sums, row m0, column r*b
  int64_t ldy;
  Activation act;
  const float* res;  // or nullptr
  int64_t ldr;
  bool prefetch_w;  // a task's first tile: its row-block's W is not in cache yet
  bool stream;      // write y with streaming stores (Int8Plan)
};
using Int8TileFn = void (*)(const Int8Tile&);

constexpr int kMaxMr = 12;
constexpr int64_t kWAhead = 2;  // blocks of W prefetched ahead on a task's first tile

inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Each path sums a tile into int32 registers and stores them, to y_raw in raw mode, else to a
// buffer that a separate dequantizing epilogue reads: with the epilogue's GELU in the same function
// GCC 12 spilled the accumulators inside the dot-product loop (a third of the int8 speed).

// ---- AVX-512: M rows x B outputs in M*B/16 zmm of int32 ----
// VNNI: vpdpbusd adds the four u8 x s8 products of each lane to it in one instruction. Without
// it, vpmaddubsw + vpmaddwd + vpaddd compute the same sums (no saturation: see kInt8WeightMax).
// Both instantiations carry the VNNI target; only VNNI = true emits vpdpbusd, and only a CPU
// with it runs that one.
template <int B, int M, bool VNNI>
MLP_AVX512_VNNI void sum_avx512(const Int8Tile& t, int32_t* out, int64_t ldo) {
  constexpr int V = B / 16;
  __m512i acc[M][V];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[m][v] = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi16(1);
  const int64_t ldx = t.ldx;
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const int8_t* w = t.vals + k * B * B;
    const uint8_t* xc = t.x + t.cols[k] * B;
    if (k + 1 < t.ke) {
      const uint8_t* next = t.x + t.cols[k + 1] * B;
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) _mm_prefetch(reinterpret_cast<const char*>(next + m * ldx), _MM_HINT_T0);
    }
    const char* wpf = reinterpret_cast<const char*>(t.vals + std::min(k + kWAhead, t.ke - 1) * B * B);
#pragma GCC unroll 1
    for (int g = 0; g < B / 4; ++g) {
      if (t.prefetch_w)
        for (int l = 0; l < B * 4; l += 64) _mm_prefetch(wpf + g * B * 4 + l, _MM_HINT_T0);
      __m512i wv[V];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(w + g * B * 4 + 64 * v);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const __m512i xb = _mm512_set1_epi32(load4(xc + m * ldx + 4 * g));
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) {
          if constexpr (VNNI)
            acc[m][v] = _mm512_dpbusd_epi32(acc[m][v], xb, wv[v]);
          else
            acc[m][v] = _mm512_add_epi32(acc[m][v], _mm512_madd_epi16(_mm512_maddubs_epi16(xb, wv[v]), ones));
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_storeu_si512(out + m * ldo + 16 * v, acc[m][v]);
}

// y = act(s_m t_j (acc - z_m w_sum_j) + bias_j) + residual, from the int32 sums in `acc` [rows][B].
template <int B>
MLP_AVX512 __attribute__((noinline)) void dequantize_avx512(const Int8Tile& t, const int32_t* acc, int rows) {
  constexpr int V = B / 16;
  __m512i wsum[V];
  __m512 wscale[V], bias[V];
  for (int v = 0; v < V; ++v) {  // the tile's columns: the same for every row
    wsum[v] = _mm512_loadu_si512(t.w_sum + 16 * v);
    wscale[v] = _mm512_loadu_ps(t.w_scale + 16 * v);
    bias[v] = t.bias ? _mm512_loadu_ps(t.bias + 16 * v) : _mm512_setzero_ps();
  }
  for (int m = 0; m < rows; ++m) {
    const __m512 sx = _mm512_set1_ps(t.x_scale[m]);
    const __m512i zp = _mm512_set1_epi32(t.x_zp[m]);
    for (int v = 0; v < V; ++v) {
      const __m512i exact = _mm512_sub_epi32(_mm512_loadu_si512(acc + m * B + 16 * v), _mm512_mullo_epi32(zp, wsum[v]));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(sx, wscale[v]));
      if (t.bias) y = _mm512_add_ps(y, bias[v]);
      if (t.act == Activation::kGelu) y = gelu512(y);
      if (t.res) y = _mm512_add_ps(y, _mm512_loadu_ps(t.res + m * t.ldr + 16 * v));
      if (t.stream)
        _mm512_stream_ps(t.y + m * t.ldy + 16 * v, y);
      else
        _mm512_storeu_ps(t.y + m * t.ldy + 16 * v, y);
    }
  }
}

template <int B, int M, bool VNNI, bool RAW>
void tile_i8_avx512(const Int8Tile& t) {
  if constexpr (RAW) {
    sum_avx512<B, M, VNNI>(t, t.y_raw, t.ldy);
  } else {
    alignas(64) int32_t acc[M * B];
    sum_avx512<B, M, VNNI>(t, acc, B);
    dequantize_avx512<B>(t, acc, M);
  }
}

// ---- AVX2: M rows x B outputs in M*B/8 ymm; a W vector is loaded once per group and output
// vector, X broadcast from memory for each row (16 ymm: 12 accumulators, W, X, ones, a product) ----
template <int B, int M>
MLP_AVX2 void sum_avx2(const Int8Tile& t, int32_t* out, int64_t ldo) {
  constexpr int V = B / 8;
  __m256i acc[M][V];
  for (int m = 0; m < M; ++m)
    for (int v = 0; v < V; ++v) acc[m][v] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t ldx = t.ldx;
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const int8_t* w = t.vals + k * B * B;
    const uint8_t* xc = t.x + t.cols[k] * B;
    const char* wpf = reinterpret_cast<const char*>(t.vals + std::min(k + kWAhead, t.ke - 1) * B * B);
#pragma GCC unroll 1
    for (int g = 0; g < B / 4; ++g) {
      if (t.prefetch_w)
        for (int l = 0; l < B * 4; l += 64) _mm_prefetch(wpf + g * B * 4 + l, _MM_HINT_T0);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * B * 4 + 32 * v));
#pragma GCC unroll 6
        for (int m = 0; m < M; ++m) {
          const __m256i xb = _mm256_set1_epi32(load4(xc + m * ldx + 4 * g));
          acc[m][v] = _mm256_add_epi32(acc[m][v], _mm256_madd_epi16(_mm256_maddubs_epi16(xb, wv), ones));
        }
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int v = 0; v < V; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * ldo + 8 * v), acc[m][v]);
}

template <int B>
MLP_AVX2 __attribute__((noinline)) void dequantize_avx2(const Int8Tile& t, const int32_t* acc, int rows) {
  for (int m = 0; m < rows; ++m) {
    const __m256 sx = _mm256_set1_ps(t.x_scale[m]);
    const __m256i zp = _mm256_set1_epi32(t.x_zp[m]);
    for (int v = 0; v < B / 8; ++v) {
      const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + m * B + 8 * v));
      const __m256i wsum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.w_sum + 8 * v));
      const __m256i exact = _mm256_sub_epi32(sums, _mm256_mullo_epi32(zp, wsum));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(exact), _mm256_mul_ps(sx, _mm256_loadu_ps(t.w_scale + 8 * v)));
      if (t.bias) y = _mm256_add_ps(y, _mm256_loadu_ps(t.bias + 8 * v));
      if (t.act == Activation::kGelu) y = gelu256(y);
      if (t.res) y = _mm256_add_ps(y, _mm256_loadu_ps(t.res + m * t.ldr + 8 * v));
      if (t.stream)
        _mm256_stream_ps(t.y + m * t.ldy + 8 * v, y);
      else
        _mm256_storeu_ps(t.y + m * t.ldy + 8 * v, y);
    }
  }
}

template <int B, int M, bool RAW>
void tile_i8_avx2(const Int8Tile& t) {
  if constexpr (RAW) {
    sum_avx2<B, M>(t, t.y_raw, t.ldy);
  } else {
    alignas(32) int32_t acc[M * B];
    sum_avx2<B, M>(t, acc, B);
    dequantize_avx2<B>(t, acc, M);
  }
}

// ---- portable ----
template <int B, int M, bool RAW>
void tile_i8_scalar(const Int8Tile& t) {
  int32_t acc[M][B] = {};
  for (int64_t k = t.kb; k < t.ke; ++k) {
    const int8_t* w = t.vals + k * B * B;
    const uint8_t* xc = t.x + t.cols[k] * B;
    for (int g = 0; g < B / 4; ++g)
      for (int m = 0; m < M; ++m) {
        const uint8_t* xg = xc + m * t.ldx + 4 * g;
        for (int j = 0; j < B; ++j) {
          const int8_t* wj = w + (g * B + j) * 4;
          acc[m][j] += xg[0] * wj[0] + xg[1] * wj[1] + xg[2] * wj[2] + xg[3] * wj[3];
        }
      }
  }
  for (int m = 0; m < M; ++m) {
    if constexpr (RAW) {
      std::memcpy(t.y_raw + m * t.ldy, acc[m], sizeof(int32_t) * B);
    } else {
      float row[B];
      for (int j = 0; j < B; ++j) {
        const int32_t exact = acc[m][j] - t.x_zp[m] * t.w_sum[j];
        row[j] = static_cast<float>(exact) * (t.x_scale[m] * t.w_scale[j]);
        if (t.bias) row[j] += t.bias[j];
      }
      epilogue_scalar(row, t.res ? t.res + m * t.ldr : nullptr, B, t.act);
      std::memcpy(t.y + m * t.ldy, row, sizeof(float) * B);
    }
  }
}

// fn[isa][block == 32][raw][rows] for rows in 1..kMaxMr
struct Int8TileTable {
  Int8TileFn fn[4][2][2][kMaxMr + 1] = {};
};

template <int B, bool RAW, int... Ms>
void fill_narrow(Int8TileFn (&s)[kMaxMr + 1], Int8TileFn (&a2)[kMaxMr + 1], std::integer_sequence<int, Ms...>) {
  ((s[Ms + 1] = &tile_i8_scalar<B, Ms + 1, RAW>), ...);
  ((a2[Ms + 1] = &tile_i8_avx2<B, Ms + 1, RAW>), ...);
}

template <int B, bool RAW, int... Ms>
void fill_wide(Int8TileFn (&bw)[kMaxMr + 1], Int8TileFn (&vnni)[kMaxMr + 1], std::integer_sequence<int, Ms...>) {
  ((bw[Ms + 1] = &tile_i8_avx512<B, Ms + 1, false, RAW>), ...);
  ((vnni[Ms + 1] = &tile_i8_avx512<B, Ms + 1, true, RAW>), ...);
}

// The scalar and AVX2 paths never take more than kNarrowMr rows (int8_rows_per_tile).
constexpr int kNarrowMr = 6;

template <int B, bool RAW>
void fill_block(Int8TileTable& t, int bi) {
  fill_narrow<B, RAW>(t.fn[0][bi][RAW], t.fn[1][bi][RAW], std::make_integer_sequence<int, kNarrowMr>{});
  fill_wide<B, RAW>(t.fn[2][bi][RAW], t.fn[3][bi][RAW], std::make_integer_sequence<int, kMaxMr>{});
}

const Int8TileTable& int8_tiles() {
  static const Int8TileTable table = [] {
    Int8TileTable t;
    fill_block<16, false>(t, 0);
    fill_block<16, true>(t, 0);
    fill_block<32, false>(t, 1);
    fill_block<32, true>(t, 1);
    return t;
  }();
  return table;
}

int64_t int8_rows_per_tile(Isa isa, int64_t block) {
  switch (isa) {
    case Isa::kAvx512Vnni:
    case Isa::kAvx512: return 12;
    case Isa::kAvx2: return block == 32 ? 3 : 6;
    default: return 4;
  }
}

// ---- row quantization ----
inline void quantize_params(float lo, float hi, float* scale, int32_t* zp) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  float s = (hi - lo) / 255.0f;
  if (!(s > 0.0f)) s = 1.0f;
  *scale = s;
  *zp = static_cast<int32_t>(std::min(255.0f, std::max(0.0f, std::nearbyint(-lo / s))));
}

// The portable forms of the two passes over x[from, n): the whole row here, the tails of the vector paths.
inline void widen_range(const float* x, int64_t from, int64_t n, float* lo, float* hi) {
  for (int64_t i = from; i < n; ++i) {
    *lo = std::min(*lo, x[i]);
    *hi = std::max(*hi, x[i]);
  }
}

inline void quantize_range(const float* x, int64_t from, int64_t n, float inv, int32_t zp, uint8_t* q) {
  for (int64_t i = from; i < n; ++i) {
    const float v = std::nearbyint(x[i] * inv) + static_cast<float>(zp);
    q[i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, v)));
  }
}

void quantize_row_scalar(const float* x, int64_t n, uint8_t* q, float* scale, int32_t* zp) {
  float lo = 0.0f, hi = 0.0f;
  widen_range(x, 0, n, &lo, &hi);
  quantize_params(lo, hi, scale, zp);
  quantize_range(x, 0, n, 1.0f / *scale, *zp, q);
}

MLP_AVX512 void quantize_row_avx512(const float* x, int64_t n, uint8_t* q, float* scale, int32_t* zp) {
  __m512 lo0 = _mm512_setzero_ps(), hi0 = _mm512_setzero_ps(), lo1 = lo0, hi1 = hi0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    lo0 = _mm512_min_ps(lo0, a);
    hi0 = _mm512_max_ps(hi0, a);
    lo1 = _mm512_min_ps(lo1, b);
    hi1 = _mm512_max_ps(hi1, b);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo0 = _mm512_min_ps(lo0, v);
    hi0 = _mm512_max_ps(hi0, v);
  }
  float l = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1)), h = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
  widen_range(x, i, n, &l, &h);
  quantize_params(l, h, scale, zp);
  const float inv = 1.0f / *scale;
  // round(x * (1 / s)) + z in integers: clamping at 0 below and unsigned saturation at 255 above is the
  // float clamp of the reference.
  const __m512 s = _mm512_set1_ps(inv);
  const __m512i z = _mm512_set1_epi32(*zp), zero = _mm512_setzero_si512();
  for (i = 0; i + 16 <= n; i += 16) {
    __m512i v = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), s),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_max_epi32(_mm512_add_epi32(v, z), zero);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtusepi32_epi8(v));
  }
  quantize_range(x, i, n, inv, *zp, q);
}

// round(x * inv) + zp clamped to [0, 255], 8 at a time (NaN converts to INT_MIN, so to 0 as in the scalar form)
MLP_AVX2 inline __m256i quantize8_avx2(const float* x, __m256 inv, __m256i zp) {
  const __m256i v = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inv)), zp);
  return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(255));
}

// The AVX2 form of the scalar quantizer, element for element: min/max with NaN ignored as std::min/max do,
// x * (1 / s) rounded to nearest even (the default rounding the scalar nearbyint uses), clamped to [0, 255].
MLP_AVX2 void quantize_row_avx2(const float* x, int64_t n, uint8_t* q, float* scale, int32_t* zp) {
  __m256 lo0 = _mm256_setzero_ps(), hi0 = _mm256_setzero_ps(), lo1 = lo0, hi1 = hi0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    lo0 = _mm256_min_ps(a, lo0);  // a NaN in x leaves the running value (the second operand) as it was
    hi0 = _mm256_max_ps(a, hi0);
    lo1 = _mm256_min_ps(b, lo1);
    hi1 = _mm256_max_ps(b, hi1);
  }
  alignas(32) float los[8], his[8];
  _mm256_store_ps(los, _mm256_min_ps(lo0, lo1));
  _mm256_store_ps(his, _mm256_max_ps(hi0, hi1));
  float l = 0.0f, h = 0.0f;
  for (int j = 0; j < 8; ++j) {
    l = std::min(l, los[j]);
    h = std::max(h, his[j]);
  }
  widen_range(x, i, n, &l, &h);
  quantize_params(l, h, scale, zp);
  const float inv = 1.0f / *scale;
  const __m256 s = _mm256_set1_ps(inv);
  const __m256i z = _mm256_set1_epi32(*zp);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane interleave of the packs
  for (i = 0; i + 32 <= n; i += 32) {
    const __m256i lo = _mm256_packus_epi32(quantize8_avx2(x + i, s, z), quantize8_avx2(x + i + 8, s, z));
    const __m256i hi = _mm256_packus_epi32(quantize8_avx2(x + i + 16, s, z), quantize8_avx2(x + i + 24, s, z));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
  }
  quantize_range(x, i, n, inv, *zp, q);
}

void quantize_rows_isa(Isa isa, const float* x, int64_t rows, int64_t in, uint8_t* q, float* scale,
                       int32_t* zp) {
  for (int64_t m = 0; m < rows; ++m) {
    if (isa >= Isa::kAvx512)
      quantize_row_avx512(x + m * in, in, q + m * in, scale + m, zp + m);
    else if (isa == Isa::kAvx2)
      quantize_row_avx2(x + m * in, in, q + m * in, scale + m, zp + m);
    else
      quantize_row_scalar(x + m * in, in, q + m * in, scale + m, zp + m);
  }
}

}  // namespace

void quantize_rows_u8(const float* x, int64_t rows, int64_t in, uint8_t* q, float* scale,
                      int32_t* zero_point) {
  quantize_rows_isa(active_isa(), x, rows, in, q, scale, zero_point);
}

std::string validate_int8(const BsrInt8Args& a, const std::vector<int64_t>& values_dims,
                          int64_t row_ptr_len, int64_t col_idx_len, int64_t bias_len,
                          int64_t w_scale_len, int64_t w_sum_len, bool check_weights) {
  if (values_dims.size() != 4 || values_dims[3] != 4 || values_dims[1] * 4 != values_dims[2])
    return "values must have shape [nnzb, b/4, b, 4] (int8 blocks packed for 4-byte dot products)";
  BsrLinearArgs shape;
  shape.in_features = a.in_features;
  shape.out_features = a.out_features;
  shape.row_ptr = a.row_ptr;
  shape.col_idx = a.col_idx;
  const std::string err = validate(shape, {values_dims[0], values_dims[2], values_dims[2]}, row_ptr_len,
                                   col_idx_len, bias_len);
  if (!err.empty()) return err;
  if (w_scale_len != a.out_features || w_sum_len != a.out_features)
    return "w_scale and w_sum need one entry per output feature (" + std::to_string(a.out_features) + ")";
  if (!check_weights) return "";
  const int64_t n = values_dims[0] * values_dims[2] * values_dims[2];
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (a.values[i] < -kInt8WeightMax) | (a.values[i] > kInt8WeightMax);
  if (bad)
    return "int8 weights must lie in [-" + std::to_string(kInt8WeightMax) + ", " + std::to_string(kInt8WeightMax) +
           "] (wider ones would saturate the non-VNNI dot product); quantize with mlprune_fx.runtime.ops";
  return "";
}

Int8Plan::Int8Plan(const BsrInt8Args& args, int64_t max_parts) : a_(args), isa_(active_isa()) {
  const int64_t b = a_.block;
  row_blocks_ = a_.out_features / b;
  mr_ = int8_rows_per_tile(isa_, b);
  // One task's quantized rows (1 byte an element) within half an L2, as the fp32 plan keeps its X.
  const int64_t budget_rows = l2_bytes() / 2 / std::max<int64_t>(1, a_.in_features);
  tile_rows_ = std::max<int64_t>(1, budget_rows / mr_) * mr_;
  tile_rows_ = std::min(tile_rows_, ((a_.rows + mr_ - 1) / mr_) * mr_);
  // A cold residual with W within half an L2: one row tile across every row-block, in row order, as
  // the fp32 plan does (Plan::Plan).
  const bool cold = cold_output(a_.rows, a_.out_features);
  if (a_.residual && a_.y_raw == nullptr && cold && a_.nnzb * b * b <= l2_bytes() / 2) tile_rows_ = mr_;
  stream_ = a_.y_raw == nullptr && streams_output(isa_, a_.y, a_.residual, cold);
  const int64_t x_bytes = a_.rows * a_.in_features * static_cast<int64_t>(sizeof(float));
  if (a_.y_raw == nullptr && a_.rows >= 2 * mr_ && (a_.rows + tile_rows_ - 1) / tile_rows_ < max_parts &&
      a_.nnzb * b * b < x_bytes) {
    // Fewer row tiles than parts: parts splitting a tile's row-blocks would each quantize all of its
    // rows. Split the rows instead, where that costs less than it saves: each part then reads all of
    // W instead of its share, so only when the kept W is smaller than X.
    const int64_t parts = std::min(max_parts, a_.rows / mr_);
    tile_rows_ = (a_.rows + parts - 1) / parts;
    const int64_t tiles = (a_.rows + tile_rows_ - 1) / tile_rows_;
    bounds_.clear();
    for (int64_t t = 0; t <= tiles; ++t) bounds_.push_back(t * row_blocks_);
    return;
  }
  bounds_ = balance_parts(a_.row_ptr, row_blocks_, a_.rows, tile_rows_, max_parts);
}

void Int8Plan::run_part(int64_t part) const {
  const bool raw = a_.y_raw != nullptr;
  const Int8TileFn* table = int8_tiles().fn[static_cast<int>(isa_)][a_.block == 32 ? 1 : 0][raw ? 1 : 0];
  const int64_t b = a_.block, in = a_.in_features;
  thread_local std::vector<uint8_t> xq;
  thread_local std::vector<float> xs;
  thread_local std::vector<int32_t> xz;
  int64_t current_tile = -1;
  for (int64_t idx = bounds_[part]; idx < bounds_[part + 1]; ++idx) {
    const int64_t t = idx / row_blocks_, r = idx % row_blocks_;
    const int64_t row0 = t * tile_rows_, row_end = std::min(a_.rows, (t + 1) * tile_rows_);
    if (t != current_tile && !raw) {  // this tile's rows, quantized once per part
      const int64_t rows = row_end - row0;
      xq.resize(static_cast<size_t>(rows * in));
      xs.resize(static_cast<size_t>(rows));
      xz.resize(static_cast<size_t>(rows));
      quantize_rows_isa(isa_, a_.x + row0 * in, rows, in, xq.data(), xs.data(), xz.data());
      current_tile = t;
    }
    Int8Tile tile;
    tile.ldx = in;
    tile.vals = a_.values;
    tile.cols = a_.col_idx;
    tile.kb = a_.row_ptr[r];
    tile.ke = a_.row_ptr[r + 1];
    tile.w_scale = raw ? nullptr : a_.w_scale + r * b;
    tile.w_sum = raw ? nullptr : a_.w_sum + r * b;
    tile.bias = a_.bias && !raw ? a_.bias + r * b : nullptr;
    tile.ldy = a_.out_features;
    tile.act = a_.activation;
    tile.ldr = a_.out_features;
    tile.stream = stream_;
    for (int64_t m0 = row0; m0 < row_end; m0 += mr_) {
      const int64_t rows = std::min(mr_, row_end - m0);
      tile.prefetch_w = m0 == row0;
      if (raw) {
        tile.x = a_.x_q + m0 * in;
        tile.y_raw = a_.y_raw + m0 * a_.out_features + r * b;
      } else {
        tile.x = xq.data() + (m0 - row0) * in;
        tile.x_scale = xs.data() + (m0 - row0);
        tile.x_zp = xz.data() + (m0 - row0);
        tile.y = a_.y + m0 * a_.out_features + r * b;
        tile.res = a_.residual ? a_.residual + m0 * a_.out_features + r * b : nullptr;
      }
      table[rows](tile);
    }
  }
  if (stream_) _mm_sfence();  // streaming stores are weakly ordered: done before the caller joins
}

}  // namespace mlprune

#pragma GCC visibility pop
