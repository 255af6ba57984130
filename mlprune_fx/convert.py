"""convert: freeze -> compact_heads -> compact_rows -> cleanup."""

from __future__ import annotations

import copy
import functools

from torch import fx

from .passes.cleanup import cleanup
from .passes.compact_heads import compact_heads
from .passes.compact_rows import compact_rows
from .passes.drop_inputs import drop_inputs
from .passes.freeze_masks import freeze_masks
from .state import pruning_state


def convert(
    prepared: fx.GraphModule, inference: bool = True, inplace: bool = False, row_multiple: int = 1
) -> fx.GraphModule:
    """A smaller eval-mode GraphModule: pruned heads and rows are physically gone.

    inference: drop `labels` from the inputs and `loss` from the outputs, so the
    result takes what a deployed model takes. `prepared` is left as it was
    unless `inplace`. row_multiple: round kept rows up to this multiple (the block
    size of a block-pruning step that follows).
    """
    pruning_state(prepared, "prepared")
    gm = prepared if inplace else copy.deepcopy(prepared)
    gm.eval()
    steps = [functools.partial(freeze_masks, row_multiple=row_multiple), compact_heads, compact_rows, cleanup]
    if inference:
        steps.insert(0, drop_inputs)
    for step in steps:
        gm = step(gm)
    pruning_state(gm).stage = "converted"
    return gm
