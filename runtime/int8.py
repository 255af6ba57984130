"""Int8 linears: weight quantization, block packing, pure-torch references, and the two int8 ops.

- `torch.ops.mlprune.block_sparse_linear_int8`: the native kernel's int8 path (runtime/csrc), for
  block-sparse matrices. X is quantized per row (asymmetric uint8), weights are int8 per output
  channel (symmetric, |Wq| <= 64: see INT8_WEIGHT_MAX), products summed exactly in int32.
- `torch.ops.mlprune.int8_linear`: a dense int8 linear with X quantized per tensor, ONNX Runtime's
  `DynamicQuantizeMatMul` numerics; exported as that op, run by ONNX Runtime's own int8 GEMM.

The references here define both ops; the native kernel equals `block_sparse_matmul_u8s8_reference` and
`quantize_rows_reference` bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import ConfigError
from .ops import ACTIVATIONS, block_rows, kernel_isa, load_library, pack_blocks

# Without VNNI the dot product adds two u8 x s8 products into an int16 with saturation (vpmaddubsw):
# 255 * 64 * 2 = 32640 fits, 255 * 127 * 2 would not. So weights use 7 bits, on every path.
INT8_WEIGHT_MAX = 64


@dataclass(frozen=True)
class QuantizedWeight:
    values: Tensor  # int8 [out, in]
    scale: Tensor  # float32 [out]: W ~ values * scale[:, None]


def quantize_weight(weight: Tensor) -> QuantizedWeight:
    """Symmetric per-output-channel int8 weights in [-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX]."""
    w = weight.detach().to(torch.float32)
    peak = w.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / INT8_WEIGHT_MAX, torch.ones_like(peak))
    values = torch.round(w / scale[:, None]).clamp(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).to(torch.int8)
    return QuantizedWeight(values, scale)


@dataclass(frozen=True)
class PackedInt8Blocks:
    values: Tensor  # int8 [nnzb, b/4, b, 4]: values[k, g, j, q] = Wq[r*b + j, c*b + 4g + q]
    row_ptr: Tensor  # int64 [out/b + 1]
    col_idx: Tensor  # int64 [nnzb]
    w_scale: Tensor  # float32 [out]
    w_sum: Tensor  # int32 [out]: sum of each row of Wq
    out_features: int
    in_features: int
    block_size: int


def quantize_blocks(values: Tensor, row_ptr: Tensor, out_features: int) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 blocks [nnzb, b, b] (transposed, as `ops.pack_blocks` stores them) -> (int8 blocks
    [nnzb, b/4, b, 4], w_scale [out], w_sum [out]), each output channel scaled by its kept weights' peak."""
    b = values.shape[-1]
    nnzb = values.shape[0]
    owner = block_rows(row_ptr).to(values.device)
    rows = (owner[:, None] * b + torch.arange(b, device=values.device)).reshape(-1)  # output row of [k, j]
    peak_kj = values.detach().abs().amax(dim=1).reshape(-1)
    peak = torch.zeros(out_features, dtype=torch.float32, device=values.device).scatter_reduce(0, rows, peak_kj, "amax")
    scale = torch.where(peak > 0, peak / INT8_WEIGHT_MAX, torch.ones_like(peak))
    q = torch.round(values.detach().float() / scale[rows].reshape(nnzb, 1, b)).clamp(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX)
    w_sum = torch.zeros(out_features, dtype=torch.int64, device=values.device).index_add_(
        0, rows, q.sum(dim=1).reshape(-1).to(torch.int64))
    packed = q.to(torch.int8).reshape(nnzb, b // 4, 4, b).permute(0, 1, 3, 2).contiguous()  # [k, g, j, q]
    return packed, scale, w_sum.to(torch.int32)


def pack_blocks_int8(weight: Tensor, block_mask: Tensor, block_size: int) -> PackedInt8Blocks:
    """Pack the blocks of `weight` [out, in] where `block_mask` is nonzero, quantized per output channel."""
    fp32 = pack_blocks(weight, block_mask, block_size)
    values, scale, w_sum = quantize_blocks(fp32.values, fp32.row_ptr, fp32.out_features)
    return PackedInt8Blocks(values, fp32.row_ptr, fp32.col_idx, scale, w_sum, fp32.out_features, fp32.in_features,
                            block_size)


def unpack_blocks_int8(values: Tensor, row_ptr: Tensor, col_idx: Tensor, out_features: int, in_features: int) -> Tensor:
    """The int8 [out, in] matrix the packed blocks stand for, zeros where blocks were dropped."""
    b = values.shape[2]
    dense = torch.zeros(out_features // b, in_features // b, b // 4, b, 4, dtype=values.dtype)
    dense[block_rows(row_ptr), col_idx] = values
    return dense.permute(0, 3, 1, 2, 4).reshape(out_features, in_features)


def _scale_zero_point(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Asymmetric uint8 range covering [lo, hi] and zero."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-lo / scale).clamp(0, 255)


def quantize_rows_reference(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(q uint8, scale, zero point int32) per row: the rule of runtime/csrc/block_sparse_linear.h.

    Rows are multiplied by the reciprocal of their scale (cheaper than a divide per element), so q may
    differ by one step from ONNX's x / scale.
    """
    x = x.to(torch.float32)
    scale, zp = _scale_zero_point(x.amin(dim=-1), x.amax(dim=-1))
    q = (torch.round(x * (1.0 / scale)[..., None]) + zp[..., None]).clamp(0, 255)
    return q.to(torch.uint8), scale, zp.to(torch.int32)


def block_sparse_matmul_u8s8_reference(x_q: Tensor, values: Tensor, row_ptr: Tensor, col_idx: Tensor, out_features: int) -> Tensor:
    """The int32 sums Xq Wq^T over the kept blocks (int64 arithmetic, then int32: exact for any sizes the kernel takes)."""
    w = unpack_blocks_int8(values, row_ptr, col_idx, out_features, x_q.shape[-1]).to(torch.int64)
    return (x_q.to(torch.int64) @ w.T).to(torch.int32)


def block_sparse_linear_int8_reference(
    x: Tensor, values: Tensor, row_ptr: Tensor, col_idx: Tensor, w_scale: Tensor, w_sum: Tensor, bias: Tensor | None,
    out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """What `block_sparse_linear_int8` computes: quantize rows, sum in integers, dequantize, then the epilogue."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    q, scale, zp = quantize_rows_reference(x)
    acc = block_sparse_matmul_u8s8_reference(q, values, row_ptr, col_idx, out_features)
    exact = acc - zp[..., None] * w_sum
    y = exact.to(torch.float32) * (scale[..., None] * w_scale)
    y = y + bias if bias is not None else y
    y = torch.nn.functional.gelu(y) if activation == "gelu" else y
    return y + residual if residual is not None else y


def quantize_tensor_reference(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX Runtime's DynamicQuantizeLinear: one (scale, zero point) for the whole tensor, x / scale."""
    x = x.to(torch.float32)
    scale, zp = _scale_zero_point(x.amin(), x.amax())
    q = (torch.round(x / scale) + zp).clamp(0, 255)
    return q.to(torch.uint8), scale, zp.to(torch.int32)


@torch.library.custom_op("mlprune::int8_linear", mutates_args=())
def int8_linear(x: Tensor, weight_t: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """y = dequant(quant(x) Wq^T) + bias, x quantized per tensor (DynamicQuantizeMatMul's numerics);
    weight_t: the int8 weight transposed, [in, out], as ONNX Runtime's op takes it. The integer
    products are exact (float64 holds every sum)."""
    q, scale, zp = quantize_tensor_reference(x)
    exact = (q.to(torch.float64) - zp.to(torch.float64)) @ weight_t.to(torch.float64)
    y = exact.to(torch.float32) * (scale * w_scale)
    return y + bias if bias is not None else y


@int8_linear.register_fake
def _(x, weight_t, w_scale, bias):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


_PATHS = {
    "avx512": "its AVX-512BW path (vpmaddubsw: this CPU has no AVX-512 VNNI)",
    "avx2": "its AVX2 path (this CPU has no AVX-512)",
    "scalar": "its portable path (this CPU has no AVX2: expect int8 to be slow)",
}
_said: set[str] = set()


def note_kernel_path() -> None:
    """Say once per process when the int8 kernel cannot use VNNI's dot product and which path it takes."""
    path = kernel_isa()
    if path in _PATHS and path not in _said:
        _said.add(path)
        warnings.warn(f"mlprune's int8 kernel runs {_PATHS[path]}", stacklevel=2)


def block_sparse_linear_int8(x: Tensor, packed: PackedInt8Blocks, bias: Tensor | None = None, activation: str = "none",
                             residual: Tensor | None = None) -> Tensor:
    """The native int8 op on packed blocks."""
    load_library()
    return torch.ops.mlprune.block_sparse_linear_int8(
        x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale, packed.w_sum, bias, packed.out_features,
        activation, residual,
    )
