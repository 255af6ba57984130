// PyTorch front end: torch.ops.mlprune.block_sparse_linear on CPU, threads from at::parallel_for.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <string>

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

std::string kernel_isa(const std::string& wanted) {
  if (!wanted.empty()) {
    mlprune::Isa isa;
    TORCH_CHECK(mlprune::parse_isa(wanted, &isa), "mlprune::kernel_isa: unknown isa '", wanted,
                "' (use auto, avx512, avx2 or scalar)");
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
  m.def("kernel_isa(str wanted=\"\") -> str", &kernel_isa);
}

TORCH_LIBRARY_IMPL(mlprune, CPU, m) { m.impl("block_sparse_linear", &block_sparse_linear); }
