// Block-sparse linear kernel shared by the PyTorch op and the ONNX Runtime custom op.
//
//   Y[n, :] = act(X[n, :] W^T + bias) + residual[n, :],   W [out, in] stored as BSR with b x b
//   blocks (b in {16, 32}); act is none or GELU (erf form), applied in registers before the store.
//
// Layout: row_ptr [out/b + 1] and col_idx [nnzb] (int64) index the kept blocks of each
// row-block; values [nnzb, b, b] holds each block PRE-TRANSPOSED:
//   values[k][i][j] = W[r*b + j, col_idx[k]*b + i]     (i: input, j: output within block).
// Why transposed: the microkernel broadcasts one X element and FMAs it into a full row of
// output features (2 zmm for b = 32, 12 rows x 2 zmm accumulators), so a block row must be
// contiguous over outputs; W's own row-major blocks would need a dot-product form with
// horizontal sums or an on-the-fly transpose. Measured with this layout (one thread, AVX-512,
// AMD Zen 5): ~220 GFLOP/s for b = 32, i.e. about the core's FMA peak (2 x 16 lanes/cycle),
// ~180 GFLOP/s for b = 16 (one broadcast per FMA there) -- no other layout can gain much.
// X is read in place, or, where each X element feeds enough FMAs (see run_part), first copied per
// task into tile order so a block's 12 rows are one contiguous run (no scattered rows, every
// broadcast address an immediate offset). Software prefetches pull the next block's X rows, on a
// row-block's first tile W two blocks ahead (in a whole model W streams from DRAM: -10 % run time),
// while a row-block's later tiles run the next row-block's W into L2 (12-layer BERT-base-shaped
// model, batch 1: -2 % of the time in its nodes; batch 8 unchanged), and each tile's output and
// residual lines before its FMAs (-14 % kernel time in a 4-layer BERT-base-shaped model at
// batch 8, no change measured at 12 layers).
//
// Threading is left to the caller: Plan splits the work (N-tiles x row-blocks, ordered
// N-tile major so each worker keeps its X rows in cache) into cost-balanced parts; each
// front end runs parts on its own pool (at::parallel_for, OrtApi::KernelContext_ParallelFor).
// One binary runs on any x86-64: AVX-512 / AVX2+FMA / scalar paths are picked at run time.
// The int8 path (block_sparse_int8.cpp) adds AVX-512 VNNI above AVX-512; fp32 runs VNNI CPUs
// on its AVX-512 tiles.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#pragma GCC visibility push(hidden)

namespace mlprune {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };

Isa best_isa();                   // what this CPU supports
Isa active_isa();                 // what the kernel uses now
Isa set_isa(Isa isa);             // clamps to best_isa(); returns the isa now active
const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* out);  // "auto", "scalar", "avx2", "avx512", "avx512vnni"

enum class Activation : int { kNone = 0, kGelu = 1 };
bool parse_activation(const std::string& name, Activation* out);  // "none", "gelu"

struct BsrLinearArgs {
  const float* x = nullptr;        // [rows, in_features], row-major, contiguous
  int64_t rows = 0;
  int64_t in_features = 0;
  const float* values = nullptr;   // [nnzb, block, block], blocks transposed (see above)
  const int64_t* row_ptr = nullptr;  // [out_features / block + 1]
  const int64_t* col_idx = nullptr;  // [nnzb]
  int64_t nnzb = 0;
  const float* bias = nullptr;     // [out_features] or nullptr
  float* y = nullptr;              // [rows, out_features]
  int64_t out_features = 0;
  int64_t block = 0;
  Activation activation = Activation::kNone;
  const float* residual = nullptr;  // [rows, out_features] contiguous, or nullptr; may be y itself
};

// Checks shapes and index contents; returns "" when fine, else a message naming the problem.
// values_dims: the dims of the values tensor; row_ptr_len / col_idx_len: their lengths.
std::string validate(const BsrLinearArgs& a, const std::vector<int64_t>& values_dims,
                     int64_t row_ptr_len, int64_t col_idx_len, int64_t bias_len);

// Tasks are (row tile, row-block) pairs, row-tile major; returns where each of at most max_parts
// parts starts (plus the end), balanced by rows x (kept blocks + a fixed cost per task).
std::vector<int64_t> balance_parts(const int64_t* row_ptr, int64_t row_blocks, int64_t rows,
                                   int64_t tile_rows, int64_t max_parts);
int64_t l2_bytes();  // one core's L2 (1 MB when the system does not say)
// A rows x out_features float output over the L2 (or 1 MB): it comes from and goes to memory (see Plan::Plan).
bool cold_output(int64_t rows, int64_t out_features);
// Whether a plan writes y with streaming stores: a cold output not written in place of its residual,
// on a vector path, at a 64-byte-aligned y (see Plan::Plan).
bool streams_output(Isa isa, const float* y, const float* residual, bool cold);

class Plan {
 public:
  Plan(const BsrLinearArgs& args, int64_t max_parts);
  int64_t num_parts() const { return static_cast<int64_t>(bounds_.size()) - 1; }
  void run_part(int64_t part) const;  // thread-safe; parts write disjoint parts of y
  void run_all() const;

 private:
  BsrLinearArgs a_;
  Isa isa_;
  int64_t mr_ = 1;         // rows per microkernel tile
  int64_t tile_rows_ = 1;  // rows per task (multiple of mr_)
  bool can_pack_ = false;  // the ISA has a packed-X tile (run_part decides per tile)
  bool stream_ = false;    // y written with streaming stores
  int64_t row_blocks_ = 0;
  std::vector<int64_t> bounds_;  // task index where each part starts, plus the end
};

// ---- int8 (block_sparse_int8.cpp) ----
//
//   Y[n, :] = act(s_n t (Xq[n, :] Wq^T - z_n w_sum) + bias) + residual[n, :]
//
// Xq: X quantized row by row to uint8, asymmetric (scale s_n, zero point z_n; 0 maps exactly).
// Wq: int8 weights, symmetric per output channel (scale t_j), |Wq| <= kInt8WeightMax; w_sum[j] is
// the sum of row j of Wq. Products accumulate exactly in int32, and are dequantized once.
// Why |Wq| <= 64: without VNNI the dot product is vpmaddubsw, which adds two u8 x s8 products
// into an int16 with saturation; 255 * 64 * 2 = 32640 never saturates, 255 * 127 * 2 would. With
// that bound every path (VNNI, AVX-512BW, AVX2, scalar) computes the same int32 sums.
// Blocks are packed for 4-byte dot products: values[k][g][j][q] = Wq[r*b + j, col_idx[k]*b + 4g + q]
// (g: group of 4 inputs, j: output within the block, q: input within the group), so one 32-bit lane
// holds 4 consecutive inputs of one output and a 4-byte broadcast of X feeds every lane.
constexpr int kInt8WeightMax = 64;

struct BsrInt8Args {
  const float* x = nullptr;          // [rows, in_features]; or, in raw mode, x_q below
  int64_t rows = 0;
  int64_t in_features = 0;
  const int8_t* values = nullptr;    // [nnzb, b/4, b, 4], see above
  const int64_t* row_ptr = nullptr;
  const int64_t* col_idx = nullptr;
  int64_t nnzb = 0;
  const float* w_scale = nullptr;    // [out_features]
  const int32_t* w_sum = nullptr;    // [out_features]
  const float* bias = nullptr;       // [out_features] or nullptr
  float* y = nullptr;                // [rows, out_features]
  int64_t out_features = 0;
  int64_t block = 0;
  Activation activation = Activation::kNone;
  const float* residual = nullptr;   // [rows, out_features] or nullptr; may be y itself
  // Raw mode (tests, benchmarks): X already quantized, Y the int32 sums Xq Wq^T, nothing else.
  const uint8_t* x_q = nullptr;
  int32_t* y_raw = nullptr;
};

// Shapes and indices as validate(), and (check_weights) every weight within
// [-kInt8WeightMax, kInt8WeightMax]: a pass over all of them, which callers may cache.
std::string validate_int8(const BsrInt8Args& a, const std::vector<int64_t>& values_dims,
                          int64_t row_ptr_len, int64_t col_idx_len, int64_t bias_len,
                          int64_t w_scale_len, int64_t w_sum_len, bool check_weights = true);

// Row-wise asymmetric uint8 quantization: lo = min(0, min x), hi = max(0, max x),
// s = (hi - lo) / 255 (1 for an all-zero row), z = clamp(round(-lo / s), 0, 255),
// q = clamp(round(x * (1 / s)) + z, 0, 255), rounding half to even: ONNX's DynamicQuantizeLinear
// applied to each row, except that x is multiplied by 1 / s (cheaper than a divide per element), so q
// may differ from x / s by one step; the pure-torch reference computes the same bits.
void quantize_rows_u8(const float* x, int64_t rows, int64_t in, uint8_t* q, float* scale,
                      int32_t* zero_point);

class Int8Plan {
 public:
  Int8Plan(const BsrInt8Args& args, int64_t max_parts);
  int64_t num_parts() const { return static_cast<int64_t>(bounds_.size()) - 1; }
  void run_part(int64_t part) const;  // thread-safe; parts write disjoint parts of y
  Isa isa() const { return isa_; }

 private:
  BsrInt8Args a_;
  Isa isa_;
  int64_t mr_ = 1;
  int64_t tile_rows_ = 1;
  int64_t row_blocks_ = 0;
  bool stream_ = false;  // y written with streaming stores
  std::vector<int64_t> bounds_;
};

}  // namespace mlprune

#pragma GCC visibility pop
