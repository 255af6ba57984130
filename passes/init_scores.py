"""Start every mask's scores from the magnitude of the weights it controls.

Scores start equal (`initial_score`), so the first units Top-k drops are picked by
whatever the scores learned before the thresholds fell. With a magnitude prior the
ranking starts where magnitude pruning would put it, and learning reorders it from there.
"""

from __future__ import annotations

import torch
from torch import fx

from ..core.pruning_state import LinearMasks, mask_modules, pruning_state
from .graph_utils import get_tensor


def unit_norms(gm: fx.GraphModule, linears: list[LinearMasks], block_size: int) -> dict[str, torch.Tensor]:
    """Per mask: the L2 norm of each unit's weights over every linear the mask acts on.

    A head counts its Q, K and V rows and its O columns; an FFN row its FC1 row (or pair of rows) and
    FC2 column. A shared weight counts once.
    """
    squares: dict[str, torch.Tensor] = {}

    def add(key: str, value: torch.Tensor) -> None:
        squares[key] = squares[key] + value if key in squares else value

    for lm in linears:
        w = get_tensor(gm, lm.site.weight).detach().float() ** 2
        if lm.rows is not None:
            add(lm.rows.key, w.sum(1).reshape(lm.rows.repeat, -1, lm.rows.unit).sum((0, 2)))
        if lm.cols is not None:
            add(lm.cols.key, w.sum(0).reshape(lm.cols.repeat, -1, lm.cols.unit).sum((0, 2)))
        if lm.blocks is not None:
            out, inp = w.shape
            add(lm.blocks.key, w.reshape(out // block_size, block_size, inp // block_size, block_size).sum((1, 3)))
        if lm.elements is not None:
            add(lm.elements.key, w)
    return {key: value.sqrt() for key, value in squares.items()}


def init_scores(gm: fx.GraphModule, prior: float) -> fx.GraphModule:
    """Add the units' norms, rescaled per mask to [0, prior], to the scores: the weakest unit gains 0, the strongest `prior`."""
    if prior == 0:
        return gm
    state = pruning_state(gm, "prepared")
    masks = mask_modules(gm)
    with torch.no_grad():
        for key, norm in unit_norms(gm, state.linears, state.config.block_size).items():
            spread = norm.max() - norm.min()
            if spread > 0:
                scores = masks[key].scores
                scores.add_((prior * (norm - norm.min()) / spread).to(scores.device, scores.dtype))
    return gm
