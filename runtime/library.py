"""Where mlprune's native code lives and what it is called: one home for the names and paths.

The PyTorch op library defines the `mlprune` op namespace; the ONNX Runtime library runs
the ops of the `ai.mlprune` domain. Both are built by `python -m mlprune_fx.runtime.build`
into runtime/_build; MLPRUNE_NATIVE_DIR points at another build of both (the sanitized
one in runtime/_build/sanitize, for `make sanitize`).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import fx

OP_NAMESPACE = "mlprune"  # torch.ops.mlprune.*
ORT_DOMAIN = "ai.mlprune"  # the ONNX domain of our custom ops
BLOCK_SPARSE_OP_TYPE = "BlockSparseLinear"
BLOCK_SPARSE_INT8_OP_TYPE = "BlockSparseLinearInt8"
BUILD_COMMAND = "python -m mlprune_fx.runtime.build"
BUILD_DIR = Path(__file__).resolve().parent / "_build"
TORCH_LIBRARY = "libmlprune_torch.so"
ORT_LIBRARY = "libmlprune_ort.so"
NATIVE_DIR_VARIABLE = "MLPRUNE_NATIVE_DIR"


def native_dir() -> Path:
    """The folder the libraries are loaded from: $MLPRUNE_NATIVE_DIR, else runtime/_build."""
    return Path(os.environ.get(NATIVE_DIR_VARIABLE) or BUILD_DIR)


def torch_library_path() -> Path:
    return native_dir() / TORCH_LIBRARY


def ort_library_path() -> Path:
    return native_dir() / ORT_LIBRARY


def is_native_op(node: fx.Node) -> bool:
    """A call of any op of the mlprune namespace (block-sparse linear, fused attention)."""
    return node.op == "call_function" and getattr(node.target, "namespace", None) == OP_NAMESPACE


def is_block_sparse_linear(node: fx.Node) -> bool:
    """A call of `torch.ops.mlprune.block_sparse_linear` (fp32): the one test every pass and export use."""
    return is_native_op(node) and node.target.name() == f"{OP_NAMESPACE}::block_sparse_linear"


# The ops the compiled library defines (the others, attention and int8_linear, are Python ops).
KERNEL_OPS = (f"{OP_NAMESPACE}::block_sparse_linear", f"{OP_NAMESPACE}::block_sparse_linear_int8")


def is_kernel_op(node: fx.Node) -> bool:
    """A call that needs the native library: either precision of the block-sparse linear."""
    return is_native_op(node) and node.target.name() in KERNEL_OPS
