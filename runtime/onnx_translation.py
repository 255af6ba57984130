"""ONNX export of torch.ops.mlprune.block_sparse_linear for torch.onnx.export(dynamo=True).

Two translations, picked with `translation_table(standard_ops=...)`:
- custom op (default): one ai.mlprune::BlockSparseLinear node, run by our ONNX Runtime library;
- standard ops: rebuild the dense W^T from the blocks (ScatterND) and MatMul, so any ONNX runtime
  can run the model. The blocks are initializers, so ONNX Runtime constant-folds W^T at load time.

The custom domain needs an ONNX OpSchema: onnxscript resolves ops through the schema registry (that
is what fails for a schema-less custom op), so `register_onnx_schema()` adds one once per process.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op

from .library import BLOCK_SPARSE_OP_TYPE as OP_TYPE
from .library import ORT_DOMAIN

OPSET_VERSION = 1


def register_onnx_schema() -> None:
    """Make ai.mlprune::BlockSparseLinear known to onnx (and so to onnxscript and onnx.checker)."""
    if onnx.defs.has(OP_TYPE, ORT_DOMAIN):
        return
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    onnx.defs.register_schema(
        OpSchema(
            OP_TYPE,
            ORT_DOMAIN,
            OPSET_VERSION,
            doc="Y = activation(X W^T + bias) + residual, W stored as BSR blocks (values[k] = block transposed). "
            "See mlprune_fx.runtime.ops.",
            inputs=[
                param("X", "T", "input [..., in_features]"),
                param("values", "T", "kept blocks [nnzb, b, b], each transposed"),
                param("row_ptr", "tensor(int64)", "row-block pointers [out/b + 1]"),
                param("col_idx", "tensor(int64)", "column-block index of each kept block [nnzb]"),
                param("bias", "T", "bias [out_features]", param_option=optional),
                param("residual", "T", "added after the activation [..., out_features]", param_option=optional),
            ],
            outputs=[param("Y", "T", "output [..., out_features]")],
            type_constraints=[("T", ["tensor(float)"], "float32 only")],
            attributes=[
                OpSchema.Attribute("out_features", OpSchema.AttrType.INT, "rows of W"),
                OpSchema.Attribute("activation", onnx.helper.make_attribute("activation", "none"),
                                   "none or gelu (erf form), applied to X W^T + bias"),
            ],
        )
    )


def _opset() -> onnxscript.values.Opset:
    register_onnx_schema()
    return onnxscript.values.Opset(ORT_DOMAIN, OPSET_VERSION)


def block_sparse_linear_custom(x, values, row_ptr, col_idx, bias=None, out_features: int = 0,
                               activation: str = "none", residual=None):
    """One ai.mlprune::BlockSparseLinear node (needs the mlprune ONNX Runtime library)."""
    fused = {"activation": activation} if activation != "none" else {}
    inputs = (x, values, row_ptr, col_idx, bias) + ((residual,) if residual is not None else ())
    return _opset().BlockSparseLinear(*inputs, out_features=out_features, **fused)


def block_sparse_linear_standard(x, values, row_ptr, col_idx, bias=None, out_features: int = 0,
                                 activation: str = "none", residual=None):
    """Standard ONNX ops: scatter the blocks into a dense W^T [in, out], then MatMul (+ Add, GELU, Add)."""
    one = op.Constant(value_ints=[1])
    b = op.Shape(values, start=1, end=2)
    in_f = op.Shape(x, start=-1)
    out_f = op.Constant(value_ints=[out_features])
    row_blocks = op.Div(out_f, b)
    # row-block of block k = number of row_ptr[1:] entries <= k
    nnzb = op.Squeeze(op.Shape(col_idx), op.Constant(value_ints=[0]))
    k = op.Range(op.Constant(value_int=0), nnzb, op.Constant(value_int=1))
    ends = op.Slice(row_ptr, one, op.Constant(value_ints=[2**62]))
    passed = op.GreaterOrEqual(op.Unsqueeze(k, one), op.Unsqueeze(ends, op.Constant(value_ints=[0])))
    rows = op.ReduceSum(op.Cast(passed, to=onnx.TensorProto.INT64), one, keepdims=0)
    indices = op.Concat(op.Unsqueeze(rows, one), op.Unsqueeze(col_idx, one), axis=1)
    grid = op.ConstantOfShape(
        op.Concat(row_blocks, op.Div(in_f, b), b, b, axis=0),
        value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]),
    )
    dense = op.ScatterND(grid, indices, values)  # [R, C, i, j]
    w_t = op.Reshape(op.Transpose(dense, perm=[1, 2, 0, 3]), op.Concat(in_f, out_f, axis=0))
    y = op.MatMul(x, w_t)
    y = y if bias is None else op.Add(y, bias)
    if activation == "gelu":  # opset 18 has no Gelu: 0.5 y (1 + erf(y / sqrt 2))
        half = op.CastLike(op.Constant(value_float=0.5), y)
        y = op.Mul(op.Mul(half, y), op.Add(op.CastLike(op.Constant(value_float=1.0), y),
                                           op.Erf(op.Mul(y, op.CastLike(op.Constant(value_float=0.7071067811865476), y)))))
    return y if residual is None else op.Add(y, residual)


CONTRIB_DOMAIN = "com.microsoft"


def register_attention_schema() -> None:
    """ONNX Runtime's MultiHeadAttention (the inputs used here), so onnxscript can emit it."""
    if onnx.defs.has("MultiHeadAttention", CONTRIB_DOMAIN):
        return
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    onnx.defs.register_schema(
        OpSchema(
            "MultiHeadAttention",
            CONTRIB_DOMAIN,
            1,
            doc="ONNX Runtime's fused multi-head attention (contrib op).",
            inputs=[
                param("query", "T", "[batch, q_len, heads x head_size]"),
                param("key", "T", "[batch, kv_len, heads x head_size]", param_option=optional),
                param("value", "T", "[batch, kv_len, heads x head_size]", param_option=optional),
                param("bias", "T", "QKV bias", param_option=optional),
                param("key_padding_mask", "M", "key padding mask", param_option=optional),
                param("attention_bias", "T", "additive [batch or 1, heads or 1, q_len, kv_len]", param_option=optional),
            ],
            outputs=[param("output", "T", "[batch, q_len, heads x head_size]")],
            type_constraints=[("T", ["tensor(float)"], "float32"), ("M", ["tensor(int32)"], "mask")],
            attributes=[
                OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads"),
                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "QK^T scale", required=False),
            ],
        )
    )


def attention_contrib(q, k, v, bias=None, num_heads: int = 1, scale: float = 1.0):
    """One com.microsoft::MultiHeadAttention node (in every ONNX Runtime CPU build)."""
    register_attention_schema()
    mha = onnxscript.values.Opset(CONTRIB_DOMAIN, 1).MultiHeadAttention
    return mha(q, k, v, None, None, bias, num_heads=num_heads, scale=scale)


def translation_table(standard_ops: bool = False, block_sparse: bool = True) -> dict[object, Callable]:
    """custom_translation_table for torch.onnx.export(dynamo=True) covering the mlprune ops."""
    import torch

    from . import attention  # noqa: F401  (defines torch.ops.mlprune.attention)

    table: dict[object, Callable] = {torch.ops.mlprune.attention.default: attention_contrib}
    if block_sparse:
        from .ops import load_library

        load_library()
        if not standard_ops:
            register_onnx_schema()
        fn = block_sparse_linear_standard if standard_ops else block_sparse_linear_custom
        table[torch.ops.mlprune.block_sparse_linear.default] = fn
    return table
