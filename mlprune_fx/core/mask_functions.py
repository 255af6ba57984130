"""Pure functions the prepared graph calls to apply masks to weights and biases."""

from __future__ import annotations

import torch


def expand_units(mask: torch.Tensor, unit: int, repeat: int = 1) -> torch.Tensor:
    """A per-head mask [H] as a per-row mask [repeat * H * unit] (rows laid out [repeat][H][unit],
    as in a fused QKV linear or a gated FFN's chunked up-projection)."""
    rows = mask if unit == 1 else mask.repeat_interleave(unit)
    return rows if repeat == 1 else rows.repeat(repeat)


def expand_blocks(mask: torch.Tensor, block: int) -> torch.Tensor:
    """A block mask [out/b, in/b] as an element mask [out, in]."""
    return mask.repeat_interleave(block, 0).repeat_interleave(block, 1)


def masked_weight(
    weight: torch.Tensor,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    elements: torch.Tensor | None = None,
) -> torch.Tensor:
    """W * rows[:, None] * cols[None, :] * elements, skipping absent factors."""
    if rows is not None:
        weight = weight * rows.to(weight.dtype).unsqueeze(1)
    if cols is not None:
        weight = weight * cols.to(weight.dtype).unsqueeze(0)
    if elements is not None:
        weight = weight * elements.to(weight.dtype)
    return weight


def masked_bias(bias: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    return bias if rows is None else bias * rows.to(bias.dtype)


def broadcast_bias(like: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What a linear with no inputs left returns: its bias at every position of `like`."""
    return bias.expand(*like.shape[:-1], bias.shape[0])
