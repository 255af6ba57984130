"""convert: freeze -> compact_heads -> compact_rows -> lower_blocks -> fuse_epilogues -> [quantize] -> cleanup."""

from __future__ import annotations

import functools
import warnings

from torch import fx

from .core.config import check_quantization
from .core.errors import NativeLibraryMissing
from .core.leap import active_cost_model
from .core.pruning_state import pruning_state
from .passes.cleanup import cleanup
from .passes.compact_heads import compact_heads
from .passes.compact_rows import compact_rows
from .passes.drop_inputs import drop_inputs
from .passes.dropout import remove_dropout
from .passes.freeze_masks import freeze_masks
from .passes.fuse_epilogues import fuse_epilogues
from .passes.graph_utils import copy_graph_module
from .passes.lower_blocks import DEFAULT_MAX_DENSITY, lower_blocks
from .passes.quantize_linears import quantize_linears


def _lowering(gm: fx.GraphModule, wanted: bool | None, max_density: float) -> fx.GraphModule:
    try:
        return fuse_epilogues(lower_blocks(gm, max_density))
    except NativeLibraryMissing as exc:
        if wanted:
            raise
        warnings.warn(f"block-sparse matrices stay dense: {exc}", stacklevel=3)
        return gm


def _compacting(config, wanted: bool | None):
    if wanted is None:
        return active_cost_model(config).compacting_pays
    return None if wanted else (lambda out, inp, kept: kept == 0)


def convert(
    prepared: fx.GraphModule,
    inference: bool = True,
    inplace: bool = False,
    row_multiple: int = 1,
    lower_blocks: bool | None = None,
    max_block_density: float = DEFAULT_MAX_DENSITY,
    quantize: str | None = None,
    compact_output_rows: bool | None = None,
) -> fx.GraphModule:
    """A smaller eval-mode GraphModule: pruned heads and rows are physically gone.

    inference: drop `labels` from the inputs and `loss` from the outputs, so the
    result takes what a deployed model takes. `prepared` is left as it was
    unless `inplace`. row_multiple: round kept rows up to this multiple (the block
    size of a block-pruning step that follows). lower_blocks: run block-masked
    linears whose kept-block density is below `max_block_density` on the native
    block-sparse kernel (default: when `inference` and the kernel is built; with
    True a missing kernel is an error). quantize="int8": every kept encoder linear
    runs with int8 weights (per output channel) and int8 activations quantized on
    the fly, dense ones on ONNX Runtime's int8 GEMM, block-sparse ones on the native
    kernel; pooler and classifier stay float32. compact_output_rows: drop the pruned
    output rows of attention-output and FC2 matrices and scatter what is left into the
    residual stream (True), or keep them as zero rows (False); default: per matrix, where
    the config's cost model (or the shipped one) says the saved rows pay for the scatter.
    Every choice computes the same.
    """
    check_quantization(quantize)
    state = pruning_state(prepared, "prepared")
    gm = prepared if inplace else copy_graph_module(prepared)
    gm.eval()
    steps = [functools.partial(freeze_masks, row_multiple=row_multiple), compact_heads,
             functools.partial(compact_rows, compacting=_compacting(state.config, compact_output_rows))]
    if inference:
        steps[:0] = [drop_inputs, remove_dropout]
    has_blocks = any(lm.blocks is not None for lm in state.linears)
    if has_blocks and (lower_blocks or (lower_blocks is None and inference)):
        steps.append(functools.partial(_lowering, wanted=lower_blocks, max_density=max_block_density))
    if quantize == "int8":
        steps.append(quantize_linears)
    steps.append(cleanup)
    for step in steps:
        gm = step(gm)
    pruning_state(gm).stage = "converted"
    return gm
