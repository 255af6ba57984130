"""Block-sparse linear: packing, the pure-torch reference, and the native op `torch.ops.mlprune.block_sparse_linear`.

Storage is BSR over b x b blocks of W [out, in]: `row_ptr` [out/b + 1] and `col_idx` [nnzb] (int64) list the kept
blocks of each row-block; `values` [nnzb, b, b] holds each block transposed, values[k][i][j] = W[r*b + j, c*b + i],
because the native microkernel streams a block row over output features (see runtime/csrc/block_sparse_linear.h).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.config import BLOCK_SIZES as SUPPORTED_BLOCK_SIZES
from ..core.errors import ConfigError, NativeLibraryMissing
from .library import BUILD_COMMAND, torch_library_path

_lock = threading.Lock()
_loaded = False


@dataclass(frozen=True)
class PackedBlocks:
    values: Tensor  # [nnzb, b, b] float32, blocks transposed
    row_ptr: Tensor  # [out/b + 1] int64
    col_idx: Tensor  # [nnzb] int64
    out_features: int
    in_features: int
    block_size: int

    @property
    def nnzb(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        total = (self.out_features // self.block_size) * (self.in_features // self.block_size)
        return self.nnzb / total if total else 0.0


def check_block_shape(out_features: int, in_features: int, block_size: int) -> None:
    """Raise ConfigError unless a [out, in] weight splits into whole b x b blocks with a supported b."""
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ConfigError(f"block size {block_size} is not supported; use one of {SUPPORTED_BLOCK_SIZES}")
    if out_features <= 0 or in_features <= 0 or out_features % block_size or in_features % block_size:
        raise ConfigError(
            f"weight shape [{out_features}, {in_features}] is not a whole number of {block_size}x{block_size} "
            f"blocks: out and in features must be positive multiples of {block_size} (pad or pick another block size)"
        )


def pack_blocks(weight: Tensor, block_mask: Tensor, block_size: int) -> PackedBlocks:
    """Pack the blocks of `weight` [out, in] where `block_mask` [out/b, in/b] is nonzero into BSR storage."""
    if weight.dim() != 2:
        raise ConfigError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    check_block_shape(out_f, in_f, block_size)
    b = block_size
    rb, cb = out_f // b, in_f // b
    if tuple(block_mask.shape) != (rb, cb):
        raise ConfigError(f"block_mask must have shape [{rb}, {cb}] for weight [{out_f}, {in_f}] and b={b}, got {tuple(block_mask.shape)}")
    weight = weight.detach().to(torch.float32)
    rows, cols = torch.nonzero(block_mask.detach().to(weight.device) != 0, as_tuple=True)  # row-major order
    blocks = weight.reshape(rb, b, cb, b).permute(0, 2, 3, 1)  # [r, c, i(in), j(out)]
    values = blocks[rows, cols].contiguous()
    row_ptr = torch.zeros(rb + 1, dtype=torch.int64, device=weight.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=rb), 0)
    return PackedBlocks(values, row_ptr, cols.to(torch.int64).contiguous(), out_f, in_f, b)


def block_rows(row_ptr: Tensor) -> Tensor:
    """Row-block index of every stored block."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)


def unpack_blocks(packed: PackedBlocks) -> Tensor:
    """Dense [out, in] weight with zeros where blocks were dropped."""
    b = packed.block_size
    rb, cb = packed.out_features // b, packed.in_features // b
    dense = torch.zeros(rb, cb, b, b, dtype=packed.values.dtype, device=packed.values.device)
    dense[block_rows(packed.row_ptr), packed.col_idx] = packed.values
    return dense.permute(0, 3, 1, 2).reshape(packed.out_features, packed.in_features)


ACTIVATIONS = ("none", "gelu")


def block_sparse_linear_reference(
    x: Tensor, values: Tensor, row_ptr: Tensor, col_idx: Tensor, bias: Tensor | None, out_features: int,
    activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """Pure-torch definition of the op: y[..., r-block] += x[..., c-block] @ values[k] for every stored block k,
    then y = activation(y + bias) + residual (GELU in its exact erf form)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    b = values.shape[-1]
    in_f = x.shape[-1]
    check_block_shape(out_features, in_f, b)
    xf = x.reshape(-1, in_f // b, b)
    y = torch.zeros(xf.shape[0], out_features // b, b, dtype=x.dtype, device=x.device)
    if col_idx.numel():
        contrib = torch.einsum("nki,kij->nkj", xf[:, col_idx], values)
        y.index_add_(1, block_rows(row_ptr), contrib)
    y = y.reshape(*x.shape[:-1], out_features)
    y = y + bias if bias is not None else y
    y = torch.nn.functional.gelu(y) if activation == "gelu" else y
    return y + residual if residual is not None else y


def load_library() -> None:
    """Load the native op library (idempotent); raise NativeLibraryMissing naming the build command if absent."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        path = torch_library_path()
        if not path.is_file():
            raise NativeLibraryMissing(
                f"native block-sparse kernel not built ({path} is missing). Build it with: {BUILD_COMMAND}"
            )
        torch.ops.load_library(str(path))
        _register_fake()
        _loaded = True


def _register_fake() -> None:
    @torch.library.register_fake("mlprune::block_sparse_linear")
    def _(x, values, row_ptr, col_idx, bias, out_features, activation="none", residual=None):
        torch._check(values.dim() == 3, lambda: "values must be [nnzb, b, b]")
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("mlprune::block_sparse_linear_int8")
    def _(x, values, row_ptr, col_idx, w_scale, w_sum, bias, out_features, activation="none", residual=None):
        torch._check(values.dim() == 4, lambda: "values must be [nnzb, b/4, b, 4]")
        return x.new_empty((*x.shape[:-1], out_features))


def kernel_isa(wanted: str = "") -> str:
    """Active instruction set of the kernel; pass 'auto', 'avx512vnni', 'avx512', 'avx2' or 'scalar' to switch
    (for tests; the fp32 path runs 'avx512vnni' as 'avx512', the int8 path uses VNNI's dot product)."""
    load_library()
    return torch.ops.mlprune.kernel_isa(wanted)


def block_sparse_linear(x: Tensor, packed: PackedBlocks, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + bias with W held as packed blocks, on the native kernel."""
    load_library()
    return torch.ops.mlprune.block_sparse_linear(x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.out_features)


class BlockSparseLinear(nn.Module):
    """Drop-in for nn.Linear whose weight is block-sparse; exports to ai.mlprune::BlockSparseLinear."""

    def __init__(self, packed: PackedBlocks, bias: Tensor | None = None):
        super().__init__()
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.block_size = packed.block_size
        self.register_buffer("values", packed.values.detach().to(torch.float32).contiguous())
        self.register_buffer("row_ptr", packed.row_ptr.detach().to(torch.int64).contiguous())
        self.register_buffer("col_idx", packed.col_idx.detach().to(torch.int64).contiguous())
        if bias is not None and tuple(bias.shape) != (packed.out_features,):
            raise ConfigError(f"bias must have shape [{packed.out_features}], got {tuple(bias.shape)}")
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())
        load_library()

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None, block_mask: Tensor, block_size: int) -> "BlockSparseLinear":
        return cls(pack_blocks(weight, block_mask, block_size), bias)

    @property
    def packed(self) -> PackedBlocks:
        return PackedBlocks(self.values, self.row_ptr, self.col_idx, self.out_features, self.in_features, self.block_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mlprune.block_sparse_linear(x, self.values, self.row_ptr, self.col_idx, self.bias, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
            f"density={self.packed.density:.3f}, bias={self.bias is not None}"
        )


def _op_already_defined() -> bool:
    try:
        torch.ops.mlprune.block_sparse_linear
    except (AttributeError, RuntimeError):
        return False
    return True


if _op_already_defined():  # library loaded by path (torch imports this module for the fake impl)
    _register_fake()
    _loaded = True
