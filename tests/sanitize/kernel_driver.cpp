// Fuzz driver for the shared block-sparse kernel (runtime/csrc: the fp32 and the int8 paths), built
// with sanitizers by tests/sanitize/run.py. It calls the kernel directly, without Python, so every
// report is about our code. Buffers are exactly sized heap vectors: any read or write past X, values,
// row_ptr, col_idx, bias or Y is caught by AddressSanitizer. The int8 path's integer sums are checked
// exactly, its quantizing op against the same sums dequantized.
//
//   kernel_driver [cases] [seed]   fuzzed shapes on every ISA and part count; exit 0 when all match
//   kernel_driver --canary         hands the kernel an X one float short: ASan must report a read past it
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "block_sparse_linear.h"

namespace {

using mlprune::BsrLinearArgs;

// Outputs 64-byte aligned, as ONNX Runtime's and torch's are, so large ones take the kernel's
// streaming-store path (it needs aligned lines); still exactly sized for ASan.
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <class U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};
using Output = std::vector<float, Aligned64<float>>;

struct Case {
  int64_t b = 16, rb = 1, cb = 1, rows = 1;
  bool has_bias = false;
  std::vector<float> x, values, bias, dense;  // dense: W [out, in], zero outside kept blocks
  std::vector<int64_t> row_ptr, col_idx;

  int64_t out() const { return rb * b; }
  int64_t in() const { return cb * b; }

  BsrLinearArgs args(float* y) const {
    BsrLinearArgs a;
    a.x = x.data();
    a.rows = rows;
    a.in_features = in();
    a.values = values.data();
    a.row_ptr = row_ptr.data();
    a.col_idx = col_idx.data();
    a.nnzb = static_cast<int64_t>(col_idx.size());
    a.bias = has_bias ? bias.data() : nullptr;
    a.y = y;
    a.out_features = out();
    a.block = b;
    return a;
  }

  std::string check_args() const {
    std::vector<float> y;
    return mlprune::validate(args(y.data()), {static_cast<int64_t>(col_idx.size()), b, b},
                             static_cast<int64_t>(row_ptr.size()), static_cast<int64_t>(col_idx.size()),
                             has_bias ? static_cast<int64_t>(bias.size()) : -1);
  }
};

Case make_case(std::mt19937_64& rng) {
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::normal_distribution<float> normal;
  Case c;
  c.b = uni(0, 1) ? 32 : 16;
  c.rb = uni(0, 4) == 0 ? uni(8, 48) : uni(1, 6);  // tall ones keep enough blocks per input for X packing
  c.cb = uni(0, 9) == 0 ? uni(20, 64) : uni(1, 6);  // wide inputs split rows into several N-tiles
  const int64_t pick = uni(0, 9);
  c.rows = pick == 0 ? 0 : pick <= 6 ? uni(1, 40) : pick <= 8 ? uni(41, 300) : uni(301, 700);  // large: streaming stores
  c.has_bias = uni(0, 1);
  const int64_t mode = uni(0, 5);  // 0: empty, 1: full, else random density
  const double density = mode == 0 ? 0.0 : mode == 1 ? 1.0 : std::uniform_real_distribution<double>(0, 1)(rng);

  c.x.resize(c.rows * c.in());
  for (float& v : c.x) v = normal(rng);
  c.dense.assign(c.out() * c.in(), 0.0f);
  c.row_ptr.push_back(0);
  for (int64_t r = 0; r < c.rb; ++r) {
    for (int64_t k = 0; k < c.cb; ++k) {
      if (std::uniform_real_distribution<double>(0, 1)(rng) >= density) continue;
      c.col_idx.push_back(k);
      for (int64_t i = 0; i < c.b; ++i)
        for (int64_t j = 0; j < c.b; ++j) {
          const float w = normal(rng);
          c.values.push_back(w);  // values[blk][i][j] = W[r*b + j, k*b + i]
          c.dense[(r * c.b + j) * c.in() + k * c.b + i] = w;
        }
    }
    c.row_ptr.push_back(static_cast<int64_t>(c.col_idx.size()));
  }
  if (c.has_bias) {
    c.bias.resize(c.out());
    for (float& v : c.bias) v = normal(rng);
  }
  return c;
}

std::vector<double> reference(const Case& c) {
  std::vector<double> y(c.rows * c.out());
  for (int64_t n = 0; n < c.rows; ++n)
    for (int64_t o = 0; o < c.out(); ++o) {
      double acc = c.has_bias ? c.bias[o] : 0.0;
      for (int64_t i = 0; i < c.in(); ++i) acc += double(c.x[n * c.in() + i]) * c.dense[o * c.in() + i];
      y[n * c.out() + o] = acc;
    }
  return y;
}

bool close(const Output& y, const std::vector<double>& ref, const Case& c, const char* what) {
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = 1e-4 * (1.0 + std::fabs(ref[i])) + 2e-6 * c.in();
    if (!(std::fabs(y[i] - ref[i]) <= tol)) {
      std::fprintf(stderr, "MISMATCH (%s) b=%lld out=%lld in=%lld rows=%lld nnzb=%zu at %zu: %g vs %g\n", what,
                   (long long)c.b, (long long)c.out(), (long long)c.in(), (long long)c.rows, c.col_idx.size(), i,
                   double(y[i]), ref[i]);
      return false;
    }
  }
  return true;
}

// Every part of one plan on its own thread, as ORT's ParallelFor and at::parallel_for may do.
void run_threaded(const mlprune::Plan& plan) {
  std::vector<std::thread> threads;
  for (int64_t p = 0; p < plan.num_parts(); ++p) threads.emplace_back([&plan, p] { plan.run_part(p); });
  for (auto& t : threads) t.join();
}

// ---- int8: the same case's blocks as int8 weights, packed [nnzb][b/4][b][4] ----
struct Int8Case {
  std::vector<int8_t> values;   // packed for the kernel
  std::vector<int32_t> dense;   // Wq [out, in]
  std::vector<float> w_scale;
  std::vector<int32_t> w_sum;
  std::vector<uint8_t> xq;      // an already quantized X for the raw sums
};

Int8Case make_int8(const Case& c, std::mt19937_64& rng) {
  Int8Case q;
  const int64_t b = c.b, nnzb = static_cast<int64_t>(c.col_idx.size());
  q.values.assign(nnzb * b * b, 0);
  q.dense.assign(c.out() * c.in(), 0);
  q.w_sum.assign(c.out(), 0);
  q.w_scale.assign(c.out(), 0.05f);
  std::uniform_int_distribution<int> w(-mlprune::kInt8WeightMax, mlprune::kInt8WeightMax), u8(0, 255);
  for (int64_t r = 0; r < c.rb; ++r)
    for (int64_t k = c.row_ptr[r]; k < c.row_ptr[r + 1]; ++k)
      for (int64_t j = 0; j < b; ++j)
        for (int64_t i = 0; i < b; ++i) {
          const int v = w(rng);
          q.values[((k * (b / 4) + i / 4) * b + j) * 4 + i % 4] = static_cast<int8_t>(v);
          q.dense[(r * b + j) * c.in() + c.col_idx[k] * b + i] = v;
          q.w_sum[r * b + j] += v;
        }
  q.xq.resize(c.rows * c.in());
  for (uint8_t& v : q.xq) v = static_cast<uint8_t>(u8(rng));
  return q;
}

mlprune::BsrInt8Args int8_args(const Case& c, const Int8Case& q) {
  mlprune::BsrInt8Args a;
  a.rows = c.rows;
  a.in_features = c.in();
  a.values = q.values.data();
  a.row_ptr = c.row_ptr.data();
  a.col_idx = c.col_idx.data();
  a.nnzb = static_cast<int64_t>(c.col_idx.size());
  a.w_scale = q.w_scale.data();
  a.w_sum = q.w_sum.data();
  a.bias = c.has_bias ? c.bias.data() : nullptr;
  a.out_features = c.out();
  a.block = c.b;
  return a;
}

// Every path and part count: the raw int32 sums exactly, and the quantizing op against its own sums.
bool run_int8_case(const Case& c, std::mt19937_64& rng) {
  const Int8Case q = make_int8(c, rng);
  mlprune::BsrInt8Args a = int8_args(c, q);
  const std::string err = mlprune::validate_int8(a, {a.nnzb, c.b / 4, c.b, 4}, static_cast<int64_t>(c.row_ptr.size()),
                                                 a.nnzb, c.has_bias ? c.out() : -1, c.out(), c.out());
  if (!err.empty()) {
    std::fprintf(stderr, "validate_int8 rejected a well-formed case: %s\n", err.c_str());
    return false;
  }
  std::vector<int64_t> sums(c.rows * c.out(), 0);
  for (int64_t n = 0; n < c.rows; ++n)
    for (int64_t o = 0; o < c.out(); ++o)
      for (int64_t i = 0; i < c.in(); ++i) sums[n * c.out() + o] += int64_t(q.xq[n * c.in() + i]) * q.dense[o * c.in() + i];
  std::vector<uint8_t> xq(c.x.size());
  std::vector<float> xs(c.rows);
  std::vector<int32_t> xz(c.rows);
  for (int isa = 0; isa <= static_cast<int>(mlprune::best_isa()); ++isa) {
    mlprune::set_isa(static_cast<mlprune::Isa>(isa));
    for (int64_t parts : {1, 3, 64}) {
      std::vector<int32_t> raw(c.rows * c.out(), -1);
      mlprune::BsrInt8Args r = a;
      r.x_q = q.xq.data();
      r.y_raw = raw.data();
      const mlprune::Int8Plan raw_plan(r, parts);
      for (int64_t p = 0; p < raw_plan.num_parts(); ++p) raw_plan.run_part(p);
      for (size_t i = 0; i < raw.size(); ++i)
        if (raw[i] != sums[i]) {
          std::fprintf(stderr, "INT8 MISMATCH (%s, %lld parts) b=%lld rows=%lld at %zu: %d vs %lld\n",
                       mlprune::isa_name(mlprune::active_isa()), (long long)parts, (long long)c.b, (long long)c.rows, i,
                       raw[i], (long long)sums[i]);
          return false;
        }
      // the quantizing op: quantize X as it does, then its output against those sums dequantized
      Output y(c.rows * c.out(), std::nanf(""));
      mlprune::BsrInt8Args full = a;
      full.x = c.x.data();
      full.y = y.data();
      const mlprune::Int8Plan plan(full, parts);
      if (parts <= 3) {
        for (int64_t p = 0; p < plan.num_parts(); ++p) plan.run_part(p);
      } else {
        std::vector<std::thread> threads;
        for (int64_t p = 0; p < plan.num_parts(); ++p) threads.emplace_back([&plan, p] { plan.run_part(p); });
        for (auto& t : threads) t.join();
      }
      mlprune::quantize_rows_u8(c.x.data(), c.rows, c.in(), xq.data(), xs.data(), xz.data());
      for (int64_t n = 0; n < c.rows; ++n)
        for (int64_t o = 0; o < c.out(); ++o) {
          int64_t acc = 0;
          for (int64_t i = 0; i < c.in(); ++i) acc += int64_t(xq[n * c.in() + i]) * q.dense[o * c.in() + i];
          const double ref = double(acc - int64_t(xz[n]) * q.w_sum[o]) * xs[n] * q.w_scale[o] + (c.has_bias ? c.bias[o] : 0.0);
          const double got = y[n * c.out() + o];
          if (!(std::fabs(got - ref) <= 1e-4 * (1.0 + std::fabs(ref)))) {
            std::fprintf(stderr, "INT8 OP MISMATCH (%s) at row %lld out %lld: %g vs %g\n",
                         mlprune::isa_name(mlprune::active_isa()), (long long)n, (long long)o, got, ref);
            return false;
          }
        }
    }
  }
  mlprune::set_isa(mlprune::best_isa());
  return true;
}

bool run_case(const Case& c) {
  const std::string err = c.check_args();
  if (!err.empty()) {
    std::fprintf(stderr, "validate rejected a well-formed case: %s\n", err.c_str());
    return false;
  }
  const std::vector<double> ref = reference(c);
  const size_t y_len = c.rows * c.out();
  for (int isa = 0; isa <= static_cast<int>(mlprune::best_isa()); ++isa) {
    mlprune::set_isa(static_cast<mlprune::Isa>(isa));
    for (int64_t parts : {1, 2, 3, 8, 64}) {
      Output y(y_len, std::nanf(""));
      const mlprune::Plan plan(c.args(y.data()), parts);
      if (parts <= 3) plan.run_all(); else run_threaded(plan);
      const std::string what = std::string(mlprune::isa_name(mlprune::active_isa())) + ", " +
                               std::to_string(plan.num_parts()) + " parts";
      if (!close(y, ref, c, what.c_str())) return false;
    }
  }
  mlprune::set_isa(mlprune::best_isa());
  return true;
}

// Malformed storage must be rejected by validate() without reading outside the given lengths.
bool check_rejections(std::mt19937_64& rng) {
  Case c;
  do c = make_case(rng); while (c.col_idx.size() < 2);
  auto rejected = [](const Case& bad, const char* what) {
    if (!bad.check_args().empty()) return true;
    std::fprintf(stderr, "validate accepted %s\n", what);
    return false;
  };
  bool ok = true;
  Case bad = c;
  bad.row_ptr.pop_back();
  ok &= rejected(bad, "a short row_ptr");
  bad = c;
  bad.row_ptr.back() += 1;
  ok &= rejected(bad, "row_ptr ending past nnzb");
  bad = c;
  bad.row_ptr[0] = 1;
  ok &= rejected(bad, "row_ptr not starting at 0");
  bad = c;
  if (bad.rb > 1) {
    bad.row_ptr[1] = bad.row_ptr.back() + 1;
    ok &= rejected(bad, "a decreasing row_ptr");
  }
  bad = c;
  bad.col_idx[1] = bad.cb;
  ok &= rejected(bad, "col_idx == column blocks");
  bad = c;
  bad.col_idx[0] = -1;
  ok &= rejected(bad, "a negative col_idx");
  bad = c;
  bad.has_bias = true;
  bad.bias.assign(c.out() - 1, 0.0f);
  ok &= rejected(bad, "a short bias");
  std::vector<float> y;
  BsrLinearArgs a = c.args(y.data());
  const auto n = static_cast<int64_t>(c.col_idx.size()), rp = static_cast<int64_t>(c.row_ptr.size());
  if (mlprune::validate(a, {n, 8, 8}, rp, n, -1).empty()) ok = false, std::fprintf(stderr, "validate accepted b=8\n");
  if (mlprune::validate(a, {n + 1, c.b, c.b}, rp, n, -1).empty())
    ok = false, std::fprintf(stderr, "validate accepted values/col_idx length mismatch\n");
  a.in_features += 1;
  if (mlprune::validate(a, {n, c.b, c.b}, rp, n, -1).empty())
    ok = false, std::fprintf(stderr, "validate accepted in_features not a multiple of b\n");
  return ok;
}

// Concurrent plans on different data while another thread flips the active ISA.
bool concurrent_plans(std::mt19937_64& rng) {
  std::vector<Case> cases;
  while (cases.size() < 4) {
    Case c = make_case(rng);
    if (c.rows > 0) cases.push_back(std::move(c));
  }
  std::vector<std::vector<double>> refs;
  for (const Case& c : cases) refs.push_back(reference(c));
  std::vector<Output> ys(cases.size());
  std::vector<int> ok(cases.size(), 1);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < cases.size(); ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20 && ok[t]; ++rep) {
        ys[t].assign(cases[t].rows * cases[t].out(), 0.0f);
        const mlprune::Plan plan(cases[t].args(ys[t].data()), 1 + rep % 4);
        plan.run_all();
        ok[t] = close(ys[t], refs[t], cases[t], "concurrent");
      }
    });
  threads.emplace_back([] {
    for (int rep = 0; rep < 200; ++rep) mlprune::set_isa(static_cast<mlprune::Isa>(rep % 4));
  });
  for (auto& t : threads) t.join();
  mlprune::set_isa(mlprune::best_isa());
  for (int v : ok)
    if (!v) return false;
  return true;
}

int canary() {
  std::mt19937_64 rng(1);
  Case c;
  const auto reads_last_column = [](const Case& k) {
    return std::find(k.col_idx.begin(), k.col_idx.end(), k.cb - 1) != k.col_idx.end();
  };
  // At most 6 row-blocks: too few kept blocks per input for the AVX-512 path to pack X, whose
  // 64-byte loads would straddle the end (ASan calls that an "unknown-crash", not an overflow).
  do c = make_case(rng); while (c.rows < 2 || c.rb > 6 || !reads_last_column(c));
  std::vector<float> y(c.rows * c.out());
  // X one float short: the last row's last kept column reads 4 bytes past the buffer, into ASan's
  // redzone on every ISA path (a read far past it could land in unpoisoned memory and only crash).
  const std::vector<float> short_x(c.x.begin(), c.x.end() - 1);
  BsrLinearArgs a = c.args(y.data());
  a.x = short_x.data();
  mlprune::Plan(a, 1).run_all();
  std::fprintf(stderr, "canary: the out-of-bounds read was NOT detected\n");
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--canary") == 0) return canary();
  const int cases = argc > 1 ? std::atoi(argv[1]) : 200;
  const unsigned long long seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 0;
  std::mt19937_64 rng(seed);
  std::printf("kernel_driver: best isa %s, %d cases, seed %llu\n", mlprune::isa_name(mlprune::best_isa()), cases, seed);
  for (int i = 0; i < cases; ++i) {
    const Case c = make_case(rng);
    if (!run_case(c) || !run_int8_case(c, rng)) return 1;
    if (i % 20 == 0 && (!check_rejections(rng) || !concurrent_plans(rng))) return 1;
  }
  std::printf("kernel_driver: all cases match the reference\n");
  return 0;
}
