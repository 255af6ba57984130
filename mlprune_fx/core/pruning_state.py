"""What mlprune_fx remembers on a GraphModule (in `gm.meta`), as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from .config import PruningConfig
from .errors import NotPreparedError
from .structures import EncoderStructure, LinearSite

META_KEY = "mlprune_fx"  # gm.meta[META_KEY]: the PruningState
SOURCE_KEY = "mlprune_fx.source"  # gm.meta[SOURCE_KEY]: the captured model's class, HF config and input specs
MASK_CONTAINER = "mlprune_masks"  # the submodule holding every LearnableMask


@dataclass(frozen=True)
class MaskRef:
    """A mask submodule applied along one axis; `unit` repeats each entry (head -> rows), and the
    result is tiled `repeat` times (the Q, K and V ranges of a fused linear)."""

    key: str
    unit: int = 1
    repeat: int = 1


@dataclass(frozen=True)
class LinearMasks:
    """Which masks act on one weight: its output rows, input columns, blocks, elements.

    `site` is the weight's first linear use; `uses` names the other linear nodes that read the same
    weight (a layer shared by every layer, a projection applied to two inputs): masked alike.
    """

    site: LinearSite
    rows: MaskRef | None = None
    cols: MaskRef | None = None
    blocks: MaskRef | None = None
    elements: MaskRef | None = None
    uses: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.site.node, *self.uses)

    def refs(self) -> list[MaskRef]:
        return [r for r in (self.rows, self.cols, self.blocks, self.elements) if r is not None]


@dataclass
class PruningState:
    config: PruningConfig
    structure: EncoderStructure
    linears: list[LinearMasks]
    stage: str = "prepared"  # prepared -> frozen -> converted
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    last_penalty: dict[str, float] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # linear node -> node that replaced it
    lowered: dict[str, float] = field(default_factory=dict)  # weight -> kept-block density, run block-sparse
    quantization: str | None = None  # "int8" once convert quantized the kept linears
    quantized: dict[str, str] = field(default_factory=dict)  # weight -> "int8" or "int8 block-sparse"

    def masks_of(self, weight: str) -> LinearMasks | None:
        return next((lm for lm in self.linears if lm.site.weight == weight), None)


def pruning_state(gm, stage: str | tuple[str, ...] | None = None) -> PruningState:
    state = gm.meta.get(META_KEY) if isinstance(gm, fx.GraphModule) else None
    if state is None:
        raise NotPreparedError(
            f"expected a model returned by mlprune_fx.prepare(), got {type(gm).__name__}; "
            "call mlprune_fx.prepare(model, config, example_inputs) first"
        )
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and state.stage not in stages:
        raise NotPreparedError(
            f"this model is at stage {state.stage!r}, but this step needs one of {stages}"
        )
    return state


def mask_modules(gm: fx.GraphModule) -> dict[str, torch.nn.Module]:
    container = getattr(gm, MASK_CONTAINER, None)
    return dict(container.items()) if container is not None else {}
