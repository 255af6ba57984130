// PyTorch front end: torch.ops.mlprune.block_sparse_linear (fp32) and block_sparse_linear_int8 on CPU,
// threads from at::parallel_for; block_sparse_matmul_u8s8 and quantize_rows_u8 expose the int8 path's
// integer parts, which tests compare bit for bit with the pure-torch reference.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "block_sparse_linear.h"

namespace {

at::Tensor block_sparse_linear(const at::Tensor& x, const at::Tensor& values,
                               const at::Tensor& row_ptr, const at::Tensor& col_idx,
                               const std::optional<at::Tensor>& bias, int64_t out_features,
                               const std::string& activation,
                               const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
              "mlprune::block_sparse_linear: x and values must be float32");
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && col_idx.scalar_type() == at::kLong,
              "mlprune::block_sparse_linear: row_ptr and col_idx must be int64");
  TORCH_CHECK(x.dim() >= 1, "mlprune::block_sparse_linear: x must have at least one dim");
  TORCH_CHECK(row_ptr.dim() == 1 && col_idx.dim() == 1,
              "mlprune::block_sparse_linear: row_ptr and col_idx must be 1-D");
  const auto xc = x.contiguous();
  const auto vc = values.contiguous();
  const auto rc = row_ptr.contiguous();
  const auto cc = col_idx.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1,
                "mlprune::block_sparse_linear: bias must be a 1-D float32 tensor");
    bc = bias->contiguous();
  }

  mlprune::BsrLinearArgs a;
  a.in_features = x.size(-1);
  a.rows = a.in_features > 0 ? xc.numel() / a.in_features : 0;
  a.out_features = out_features;
  a.values = vc.data_ptr<float>();
  a.row_ptr = rc.data_ptr<int64_t>();
  a.col_idx = cc.data_ptr<int64_t>();
  a.nnzb = cc.numel();
  a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  a.block = vc.dim() == 3 ? vc.size(1) : 0;
  const std::string err = mlprune::validate(a, vc.sizes().vec(), rc.numel(), cc.numel(),
                                            bc.defined() ? bc.numel() : -1);
  TORCH_CHECK(err.empty(), "mlprune::block_sparse_linear: ", err);

  TORCH_CHECK(mlprune::parse_activation(activation, &a.activation),
              "mlprune::block_sparse_linear: unknown activation '", activation, "' (use none or gelu)");
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = out_features;
  at::Tensor rc_;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->sizes().vec() == out_sizes,
                "mlprune::block_sparse_linear: residual must be float32 with the output's shape ",
                at::IntArrayRef(out_sizes), ", got ", residual->sizes());
    rc_ = residual->contiguous();
    a.residual = rc_.data_ptr<float>();
  }
  at::Tensor y = at::empty(out_sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (a.rows == 0) return y;
  a.x = xc.data_ptr<float>();
  a.y = y.data_ptr<float>();

  const mlprune::Plan plan(a, at::get_num_threads());
  at::parallel_for(0, plan.num_parts(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) plan.run_part(p);
  });
  return y;
}

// Shared by the int8 ops: the BSR index tensors, checked and contiguous.
struct Int8Blocks {
  at::Tensor values, row_ptr, col_idx;
};

Int8Blocks int8_blocks(const char* op, const at::Tensor& values, const at::Tensor& row_ptr,
                       const at::Tensor& col_idx) {
  TORCH_CHECK(values.scalar_type() == at::kChar, op, ": values must be int8");
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && col_idx.scalar_type() == at::kLong && row_ptr.dim() == 1 &&
                  col_idx.dim() == 1,
              op, ": row_ptr and col_idx must be 1-D int64");
  return {values.contiguous(), row_ptr.contiguous(), col_idx.contiguous()};
}

// The shape and block fields both int8 ops fill alike, from X's last dim and the packed blocks.
mlprune::BsrInt8Args int8_args(const Int8Blocks& blocks, const at::Tensor& xc, int64_t out_features) {
  mlprune::BsrInt8Args a;
  a.in_features = xc.size(-1);
  a.rows = a.in_features > 0 ? xc.numel() / a.in_features : 0;
  a.out_features = out_features;
  a.values = blocks.values.data_ptr<int8_t>();
  a.row_ptr = blocks.row_ptr.data_ptr<int64_t>();
  a.col_idx = blocks.col_idx.data_ptr<int64_t>();
  a.nnzb = blocks.col_idx.numel();
  a.block = blocks.values.dim() == 4 ? blocks.values.size(2) : 0;
  return a;
}

void run_int8(const mlprune::BsrInt8Args& a) {
  const mlprune::Int8Plan plan(a, at::get_num_threads());
  at::parallel_for(0, plan.num_parts(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) plan.run_part(p);
  });
}

at::Tensor block_sparse_linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                    const at::Tensor& col_idx, const at::Tensor& w_scale,
                                    const at::Tensor& w_sum, const std::optional<at::Tensor>& bias,
                                    int64_t out_features, const std::string& activation,
                                    const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "mlprune::block_sparse_linear_int8";
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1, op, ": x must be float32 with at least one dim");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_sum.scalar_type() == at::kInt, op,
              ": w_scale must be float32 and w_sum int32");
  const Int8Blocks blocks = int8_blocks(op, values, row_ptr, col_idx);
  const auto xc = x.contiguous();
  const auto sc = w_scale.contiguous();
  const auto wc = w_sum.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1, op, ": bias must be a 1-D float32 tensor");
    bc = bias->contiguous();
  }
  mlprune::BsrInt8Args a = int8_args(blocks, xc, out_features);
  a.w_scale = sc.data_ptr<float>();
  a.w_sum = wc.data_ptr<int32_t>();
  a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  const std::string err = mlprune::validate_int8(a, blocks.values.sizes().vec(), blocks.row_ptr.numel(),
                                                 blocks.col_idx.numel(), bc.defined() ? bc.numel() : -1,
                                                 sc.numel(), wc.numel());
  TORCH_CHECK(err.empty(), op, ": ", err);
  TORCH_CHECK(mlprune::parse_activation(activation, &a.activation), op, ": unknown activation '", activation,
              "' (use none or gelu)");
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = out_features;
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->sizes().vec() == out_sizes, op,
                ": residual must be float32 with the output's shape ", at::IntArrayRef(out_sizes), ", got ",
                residual->sizes());
    res = residual->contiguous();
    a.residual = res.data_ptr<float>();
  }
  at::Tensor y = at::empty(out_sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (a.rows == 0) return y;
  a.x = xc.data_ptr<float>();
  a.y = y.data_ptr<float>();
  run_int8(a);
  return y;
}

// The int32 sums Xq Wq^T alone, from an already quantized X: what the reference is checked against.
at::Tensor block_sparse_matmul_u8s8(const at::Tensor& x_q, const at::Tensor& values, const at::Tensor& row_ptr,
                                    const at::Tensor& col_idx, int64_t out_features) {
  constexpr const char* op = "mlprune::block_sparse_matmul_u8s8";
  TORCH_CHECK(x_q.scalar_type() == at::kByte && x_q.dim() >= 1, op, ": x_q must be uint8 with at least one dim");
  const Int8Blocks blocks = int8_blocks(op, values, row_ptr, col_idx);
  const auto xc = x_q.contiguous();
  mlprune::BsrInt8Args a = int8_args(blocks, xc, out_features);
  const std::string err = mlprune::validate_int8(a, blocks.values.sizes().vec(), blocks.row_ptr.numel(),
                                                 blocks.col_idx.numel(), -1, out_features, out_features);
  TORCH_CHECK(err.empty(), op, ": ", err);
  auto out_sizes = x_q.sizes().vec();
  out_sizes.back() = out_features;
  at::Tensor y = at::empty(out_sizes, x_q.options().dtype(at::kInt));
  if (a.rows == 0) return y;
  a.x_q = xc.data_ptr<uint8_t>();
  a.y_raw = y.data_ptr<int32_t>();
  run_int8(a);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_u8(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1, "mlprune::quantize_rows_u8: x must be float32");
  const auto xc = x.contiguous();
  const int64_t in = x.size(-1), rows = in > 0 ? xc.numel() / in : 0;
  auto row_sizes = x.sizes().vec();
  row_sizes.pop_back();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte));
  at::Tensor scale = at::empty(row_sizes, x.options());
  at::Tensor zp = at::empty(row_sizes, x.options().dtype(at::kInt));
  if (rows > 0)
    mlprune::quantize_rows_u8(xc.data_ptr<float>(), rows, in, q.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                              zp.data_ptr<int32_t>());
  return {q, scale, zp};
}

std::string kernel_isa(const std::string& wanted) {
  if (!wanted.empty()) {
    mlprune::Isa isa;
    TORCH_CHECK(mlprune::parse_isa(wanted, &isa), "mlprune::kernel_isa: unknown isa '", wanted,
                "' (use auto, avx512vnni, avx512, avx2 or scalar)");
    mlprune::set_isa(isa);
  }
  return mlprune::isa_name(mlprune::active_isa());
}

}  // namespace

TORCH_LIBRARY(mlprune, m) {
  m.set_python_module("mlprune_fx.runtime.ops");
  m.def(
      "block_sparse_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, "
      "Tensor? bias, int out_features, str activation=\"none\", Tensor? residual=None) -> Tensor");
  m.def(
      "block_sparse_linear_int8(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor w_scale, "
      "Tensor w_sum, Tensor? bias, int out_features, str activation=\"none\", Tensor? residual=None) -> Tensor");
  m.def("block_sparse_matmul_u8s8(Tensor x_q, Tensor values, Tensor row_ptr, Tensor col_idx, int out_features) -> Tensor");
  m.def("quantize_rows_u8(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("kernel_isa(str wanted=\"\") -> str", &kernel_isa);
}

TORCH_LIBRARY_IMPL(mlprune, CPU, m) {
  m.impl("block_sparse_linear", &block_sparse_linear);
  m.impl("block_sparse_linear_int8", &block_sparse_linear_int8);
  m.impl("block_sparse_matmul_u8s8", &block_sparse_matmul_u8s8);
  m.impl("quantize_rows_u8", &quantize_rows_u8);
}
