"""ONNX export of the mlprune ops for torch.onnx.export(dynamo=True).

Two translations of each op, picked with `translation_table(standard_ops=...)`:
- default: one node per op. `block_sparse_linear[_int8]` -> ai.mlprune::BlockSparseLinear[Int8], run
  by our ONNX Runtime library; `int8_linear` -> com.microsoft::DynamicQuantizeMatMul, ONNX Runtime's
  own int8 GEMM; `attention` -> com.microsoft::MultiHeadAttention.
- standard ops, for runtimes without either: blocks scattered into a dense W^T (ScatterND; the blocks
  are initializers, so ONNX Runtime folds W^T at load time) then MatMul; `int8_linear` as
  DynamicQuantizeLinear + MatMulInteger; the int8 block op's row-wise quantization written out in
  float ops.

onnxscript resolves ops through ONNX's schema registry (a schema-less custom op fails there), so
`_register` adds a schema for each op of ours and of com.microsoft used here, once per process.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op

from .library import BLOCK_SPARSE_INT8_OP_TYPE, BLOCK_SPARSE_OP_TYPE, ORT_DOMAIN

OPSET_VERSION = 1
CONTRIB_DOMAIN = "com.microsoft"
_INT64 = "tensor(int64)"


def _register(name: str, domain: str, doc: str, inputs: list, outputs: list, types: list, attributes: list) -> None:
    if onnx.defs.has(name, domain):
        return
    onnx.defs.register_schema(OpSchema(name, domain, OPSET_VERSION, doc=doc, inputs=inputs, outputs=outputs,
                                       type_constraints=types, attributes=attributes))


_param = OpSchema.FormalParameter
_OPTIONAL = OpSchema.FormalParameterOption.Optional


def _linear_attributes() -> list:
    return [
        OpSchema.Attribute("out_features", OpSchema.AttrType.INT, "rows of W"),
        OpSchema.Attribute("activation", onnx.helper.make_attribute("activation", "none"),
                           "none or gelu (erf form), applied to X W^T + bias"),
    ]


def register_onnx_schema() -> None:
    """Make ai.mlprune::BlockSparseLinear (and its int8 form) known to onnx, onnxscript and onnx.checker."""
    _register(
        BLOCK_SPARSE_OP_TYPE, ORT_DOMAIN,
        "Y = activation(X W^T + bias) + residual, W stored as BSR blocks (values[k] = block transposed). "
        "See mlprune_fx.runtime.ops.",
        [_param("X", "T", "input [..., in_features]"),
         _param("values", "T", "kept blocks [nnzb, b, b], each transposed"),
         _param("row_ptr", _INT64, "row-block pointers [out/b + 1]"),
         _param("col_idx", _INT64, "column-block index of each kept block [nnzb]"),
         _param("bias", "T", "bias [out_features]", param_option=_OPTIONAL),
         _param("residual", "T", "added after the activation [..., out_features]", param_option=_OPTIONAL)],
        [_param("Y", "T", "output [..., out_features]")],
        [("T", ["tensor(float)"], "float32 only")], _linear_attributes(),
    )
    _register(
        BLOCK_SPARSE_INT8_OP_TYPE, ORT_DOMAIN,
        "Y = activation(dequant(quant_rows(X) Wq^T) + bias) + residual: X quantized per row to uint8, int8 "
        "weights per output channel in BSR blocks packed for 4-byte dot products. See mlprune_fx.runtime.int8.",
        [_param("X", "T", "input [..., in_features]"),
         _param("values", "tensor(int8)", "kept blocks [nnzb, b/4, b, 4]"),
         _param("row_ptr", _INT64, "row-block pointers [out/b + 1]"),
         _param("col_idx", _INT64, "column-block index of each kept block [nnzb]"),
         _param("w_scale", "T", "weight scale per output [out_features]"),
         _param("w_sum", "tensor(int32)", "sum of each int8 weight row [out_features]"),
         _param("bias", "T", "bias [out_features]", param_option=_OPTIONAL),
         _param("residual", "T", "added after the activation [..., out_features]", param_option=_OPTIONAL)],
        [_param("Y", "T", "output [..., out_features]")],
        [("T", ["tensor(float)"], "float32 only")], _linear_attributes(),
    )


def _opset() -> onnxscript.values.Opset:
    register_onnx_schema()
    return onnxscript.values.Opset(ORT_DOMAIN, OPSET_VERSION)


def _epilogue(y, bias, activation: str, residual):
    """+ bias, GELU (opset 18 has none: 0.5 y (1 + erf(y / sqrt 2))), + residual."""
    y = y if bias is None else op.Add(y, bias)
    if activation == "gelu":
        half = op.CastLike(op.Constant(value_float=0.5), y)
        y = op.Mul(op.Mul(half, y), op.Add(op.CastLike(op.Constant(value_float=1.0), y),
                                           op.Erf(op.Mul(y, op.CastLike(op.Constant(value_float=0.7071067811865476), y)))))
    return y if residual is None else op.Add(y, residual)


def _dense_from_blocks(values, row_ptr, col_idx, x, out_features: int, int8: bool):
    """W^T [in, out] from the kept blocks (zeros elsewhere), in the blocks' element type."""
    one = op.Constant(value_ints=[1])
    b = op.Shape(values, start=2, end=3) if int8 else op.Shape(values, start=1, end=2)
    in_f = op.Shape(x, start=-1)
    out_f = op.Constant(value_ints=[out_features])
    # row-block of block k = number of row_ptr[1:] entries <= k
    nnzb = op.Squeeze(op.Shape(col_idx), op.Constant(value_ints=[0]))
    k = op.Range(op.Constant(value_int=0), nnzb, op.Constant(value_int=1))
    ends = op.Slice(row_ptr, one, op.Constant(value_ints=[2**62]))
    passed = op.GreaterOrEqual(op.Unsqueeze(k, one), op.Unsqueeze(ends, op.Constant(value_ints=[0])))
    rows = op.ReduceSum(op.Cast(passed, to=onnx.TensorProto.INT64), one, keepdims=0)
    indices = op.Concat(op.Unsqueeze(rows, one), op.Unsqueeze(col_idx, one), axis=1)
    if int8:  # blocks [nnzb, b/4, b(out), 4]: grid [R, C, g, j, q] -> [C, g, q, R, j]
        zero = onnx.helper.make_tensor("zero", onnx.TensorProto.INT8, [1], [0])
        shape = op.Concat(op.Div(out_f, b), op.Div(in_f, b), op.Div(b, op.Constant(value_ints=[4])), b,
                          op.Constant(value_ints=[4]), axis=0)
        perm = [1, 2, 4, 0, 3]
    else:  # blocks [nnzb, b(in), b(out)]: grid [R, C, i, j] -> [C, i, R, j]
        zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])
        shape = op.Concat(op.Div(out_f, b), op.Div(in_f, b), b, b, axis=0)
        perm = [1, 2, 0, 3]
    dense = op.ScatterND(op.ConstantOfShape(shape, value=zero), indices, values)
    return op.Reshape(op.Transpose(dense, perm=perm), op.Concat(in_f, out_f, axis=0))


def block_sparse_linear_custom(x, values, row_ptr, col_idx, bias=None, out_features: int = 0,
                               activation: str = "none", residual=None):
    """One ai.mlprune::BlockSparseLinear node (needs the mlprune ONNX Runtime library)."""
    fused = {"activation": activation} if activation != "none" else {}
    inputs = (x, values, row_ptr, col_idx, bias) + ((residual,) if residual is not None else ())
    return _opset().BlockSparseLinear(*inputs, out_features=out_features, **fused)


def block_sparse_linear_standard(x, values, row_ptr, col_idx, bias=None, out_features: int = 0,
                                 activation: str = "none", residual=None):
    """Standard ONNX ops: dense W^T from the blocks, then MatMul (+ Add, GELU, Add)."""
    y = op.MatMul(x, _dense_from_blocks(values, row_ptr, col_idx, x, out_features, int8=False))
    return _epilogue(y, bias, activation, residual)


def block_sparse_linear_int8_custom(x, values, row_ptr, col_idx, w_scale, w_sum, bias=None, out_features: int = 0,
                                    activation: str = "none", residual=None):
    """One ai.mlprune::BlockSparseLinearInt8 node (needs the mlprune ONNX Runtime library)."""
    fused = {"activation": activation} if activation != "none" else {}
    inputs = (x, values, row_ptr, col_idx, w_scale, w_sum, bias) + ((residual,) if residual is not None else ())
    return _opset().BlockSparseLinearInt8(*inputs, out_features=out_features, **fused)


def block_sparse_linear_int8_standard(x, values, row_ptr, col_idx, w_scale, w_sum, bias=None, out_features: int = 0,
                                      activation: str = "none", residual=None):
    """Standard float ops computing what the int8 kernel does: each row quantized (its zero point and
    scale as in runtime/int8.py), (q - z) Wq^T summed in float, scaled by s_row * w_scale."""
    last = op.Constant(value_ints=[-1])
    zero = op.CastLike(op.Constant(value_float=0.0), x)
    lo = op.Min(op.ReduceMin(x, last, keepdims=1), zero)
    hi = op.Max(op.ReduceMax(x, last, keepdims=1), zero)
    scale = op.Div(op.Sub(hi, lo), op.CastLike(op.Constant(value_float=255.0), x))
    scale = op.Where(op.Greater(scale, zero), scale, op.CastLike(op.Constant(value_float=1.0), x))
    top = op.CastLike(op.Constant(value_float=255.0), x)
    zp = op.Clip(op.Round(op.Div(op.Neg(lo), scale)), zero, top)
    q = op.Clip(op.Add(op.Round(op.Div(x, scale)), zp), zero, top)
    w_t = op.Cast(_dense_from_blocks(values, row_ptr, col_idx, x, out_features, int8=True), to=onnx.TensorProto.FLOAT)
    y = op.Mul(op.MatMul(op.Sub(q, zp), w_t), op.Mul(scale, w_scale))
    return _epilogue(y, bias, activation, residual)


def register_contrib_schemas() -> None:
    """The com.microsoft ops written here (inputs as used), so onnxscript can emit them."""
    _register(
        "MultiHeadAttention", CONTRIB_DOMAIN, "ONNX Runtime's fused multi-head attention (contrib op).",
        [_param("query", "T", "[batch, q_len, heads x head_size]"),
         _param("key", "T", "[batch, kv_len, heads x head_size]", param_option=_OPTIONAL),
         _param("value", "T", "[batch, kv_len, heads x head_size]", param_option=_OPTIONAL),
         _param("bias", "T", "QKV bias", param_option=_OPTIONAL),
         _param("key_padding_mask", "M", "key padding mask", param_option=_OPTIONAL),
         _param("attention_bias", "T", "additive [batch or 1, heads or 1, q_len, kv_len]", param_option=_OPTIONAL)],
        [_param("output", "T", "[batch, q_len, heads x head_size]")],
        [("T", ["tensor(float)"], "float32"), ("M", ["tensor(int32)"], "mask")],
        [OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads"),
         OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "QK^T scale", required=False)],
    )
    _register(
        "DynamicQuantizeMatMul", CONTRIB_DOMAIN,
        "ONNX Runtime's int8 matmul: A quantized per tensor to uint8 inside, B int8 (contrib op).",
        [_param("A", "T1", "input [..., K]"), _param("B", "T2", "int8 weights [K, N]"),
         _param("b_scale", "T1", "scale of B, per column [N]"),
         _param("b_zero_point", "T2", "zero point of B", param_option=_OPTIONAL),
         _param("bias", "T1", "bias [N]", param_option=_OPTIONAL)],
        [_param("Y", "T1", "[..., N]")],
        [("T1", ["tensor(float)"], "float32"), ("T2", ["tensor(int8)"], "int8")], [],
    )


def _contrib() -> onnxscript.values.Opset:
    register_contrib_schemas()
    return onnxscript.values.Opset(CONTRIB_DOMAIN, 1)


def attention_contrib(q, k, v, bias=None, num_heads: int = 1, scale: float = 1.0):
    """One com.microsoft::MultiHeadAttention node (in every ONNX Runtime CPU build)."""
    return _contrib().MultiHeadAttention(q, k, v, None, None, bias, num_heads=num_heads, scale=scale)


def int8_linear_contrib(x, weight_t, w_scale, bias=None):
    """One com.microsoft::DynamicQuantizeMatMul node: ONNX Runtime's own int8 GEMM."""
    return _contrib().DynamicQuantizeMatMul(x, weight_t, w_scale, None, bias)


def int8_linear_standard(x, weight_t, w_scale, bias=None):
    """DynamicQuantizeLinear + MatMulInteger, dequantized: the same numbers with standard ONNX ops."""
    q, scale, zp = op.DynamicQuantizeLinear(x)
    acc = op.MatMulInteger(q, weight_t, zp)
    y = op.Mul(op.Cast(acc, to=onnx.TensorProto.FLOAT), op.Mul(scale, w_scale))
    return y if bias is None else op.Add(y, bias)


def translation_table(standard_ops: bool = False, native: bool = True) -> dict[object, Callable]:
    """custom_translation_table for torch.onnx.export(dynamo=True) covering the mlprune ops.

    native: the graph holds ops of the native library (loaded here, so torch knows them)."""
    import torch

    from . import attention, int8  # noqa: F401  (define torch.ops.mlprune.attention and int8_linear)

    table: dict[object, Callable] = {
        torch.ops.mlprune.attention.default: attention_contrib,
        torch.ops.mlprune.int8_linear.default: int8_linear_standard if standard_ops else int8_linear_contrib,
    }
    if native:
        from .ops import load_library

        load_library()
        if not standard_ops:
            register_onnx_schema()
        table[torch.ops.mlprune.block_sparse_linear.default] = (
            block_sparse_linear_standard if standard_ops else block_sparse_linear_custom)
        table[torch.ops.mlprune.block_sparse_linear_int8.default] = (
            block_sparse_linear_int8_standard if standard_ops else block_sparse_linear_int8_custom)
    return table
