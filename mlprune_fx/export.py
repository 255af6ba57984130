"""export_onnx: a converted GraphModule -> an ONNX file with dynamic batch and sequence."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import fx
from torch.fx.graph import _PyTreeCodeGen

from .core.errors import ExampleInputsError
from .core.pruning_state import pruning_state
from .passes.capture import dynamic_shapes
from .passes.graph_utils import copy_graph_module, no_pytree_spec_warning
from .runtime.library import is_kernel_op, is_native_op


def input_names(gm: fx.GraphModule) -> list[str]:
    codegen = gm.graph._codegen
    if isinstance(codegen, _PyTreeCodeGen):
        return list(codegen.pytree_info.orig_args)
    return [n.target for n in gm.graph.find_nodes(op="placeholder")]


def output_names(gm: fx.GraphModule) -> list[str] | None:
    """Names of the flattened outputs, from the output type's fields (e.g. `logits`)."""
    codegen = gm.graph._codegen
    if not isinstance(codegen, _PyTreeCodeGen) or codegen.pytree_info.out_spec is None:
        return None

    def walk(spec, prefix):
        if spec.is_leaf():
            return [prefix or "output"]
        context = spec.context if isinstance(spec.context, list) else list(range(spec.num_children))
        names = []
        for key, child in zip(context, spec.children()):
            names.extend(walk(child, f"{prefix}.{key}" if prefix else str(key)))
        return names

    return walk(codegen.pytree_info.out_spec, "")


def uses_native_ops(gm: fx.GraphModule) -> bool:
    return any(is_native_op(n) for n in gm.graph.nodes)


def _check_inputs(gm: fx.GraphModule, example_inputs) -> dict[str, torch.Tensor]:
    expected = input_names(gm)
    if example_inputs is None:
        raise ExampleInputsError(f"export_onnx needs example_inputs with the keys {expected}")
    if not isinstance(example_inputs, Mapping):
        raise ExampleInputsError(f"example_inputs must be a dict with the keys {expected}")
    inputs = dict(example_inputs)
    if set(inputs) != set(expected):
        extra = sorted(set(inputs) - set(expected))
        missing = sorted(set(expected) - set(inputs))
        hint = " (the converted model takes no labels; leave them out)" if "labels" in extra else ""
        raise ExampleInputsError(
            f"example_inputs do not match the converted model's inputs {expected}: "
            f"missing {missing}, unexpected {extra}{hint}"
        )
    inputs = {k: inputs[k] for k in expected}
    if next(iter(inputs.values())).shape[0] == 1:
        inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
    return inputs


@contextlib.contextmanager
def _quiet_exporter(verbose: bool):
    """Unless verbose: the exporter's progress prints; its stderr warning that torchvision's ops are
    skipped when torchvision is not installed (an encoder never uses them; it only alarms users); and
    the optimizer's note that it does not fold LayerNormalization's extra outputs (DeBERTa's graph has
    such nodes; nothing is wrong)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in
               ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(
    converted: fx.GraphModule,
    path: str | os.PathLike,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
    *,
    standard_ops: bool = False,
    fused_attention: bool | None = None,
    opset_version: int | None = None,
    verbose: bool = False,
) -> Path:
    """Write `converted` as ONNX; batch and sequence stay dynamic.

    Block-sparse linears become `ai.mlprune::BlockSparseLinear` (run them with
    `mlprune_fx.runtime.InferenceSession`), or standard ONNX ops when
    `standard_ops=True`, for runtimes without the mlprune library. fused_attention
    (default: unless standard_ops) writes each self-attention as ONNX Runtime's
    `com.microsoft.MultiHeadAttention` instead of its dozen decomposed nodes. The file
    is written to a temporary name first, so a failed export leaves `path` untouched.
    """
    pruning_state(converted, "converted")
    inputs = _check_inputs(converted, example_inputs)
    dynamic = dynamic_shapes(inputs)
    if fused_attention is None:
        fused_attention = not standard_ops
    converted.eval()
    if fused_attention:
        from .passes.fuse_attention import fuse_attention

        converted = fuse_attention(copy_graph_module(converted), inputs)
    kwargs = {}
    if uses_native_ops(converted):
        from .runtime.onnx_translation import translation_table

        native = any(is_kernel_op(n) for n in converted.graph.nodes)
        kwargs["custom_translation_table"] = translation_table(standard_ops=standard_ops, native=native)
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with _quiet_exporter(verbose), no_pytree_spec_warning():
            program = torch.onnx.export(
                converted, (), kwargs=inputs, dynamo=True, dynamic_shapes=dynamic,
                input_names=list(inputs), output_names=output_names(converted),
                external_data=False, verbose=verbose, **kwargs,
            )
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
