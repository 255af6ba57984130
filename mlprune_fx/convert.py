"""convert: freeze -> compact_heads -> compact_rows -> cleanup."""

from __future__ import annotations

import copy

from torch import fx

from .passes.cleanup import cleanup
from .passes.compact_heads import compact_heads
from .passes.compact_rows import compact_rows
from .passes.freeze_masks import freeze_masks
from .state import pruning_state


def convert(prepared: fx.GraphModule, inplace: bool = False) -> fx.GraphModule:
    """A smaller eval-mode GraphModule: pruned heads and rows are physically gone."""
    pruning_state(prepared, "prepared")
    gm = prepared if inplace else copy.deepcopy(prepared)
    gm.eval()
    for step in (freeze_masks, compact_heads, compact_rows, cleanup):
        gm = step(gm)
    pruning_state(gm).stage = "converted"
    return gm
