"""The user's whole pruning recipe in one validated dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable

from .cost_model import CostModel
from .errors import ConfigError

GRANULARITIES = ("head", "row", "block", "unstructured")
BLOCK_SIZES = (16, 32)  # the sides the native block-sparse kernel runs
QUANTIZATIONS = (None, "int8")  # what convert(quantize=...) takes


def check_quantization(quantize: object) -> None:
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={quantize!r} is not supported: use one of {QUANTIZATIONS}")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how far.

    target: remaining fraction of the prunable encoder weights (of their work, with
        attention_length), in (0, 1]. 0.5 when neither target nor speedup is given.
    speedup: instead of target, how many times faster than dense the converted model
        should run in ONNX Runtime, predicted by `cost_model`: the regulariser then drives
        predicted latency / dense latency to 1 / speedup.
    cost_model: the `CostModel` that predicts latency (from `mlprune_fx.calibrate` on the
        deployment machine); None uses the one shipped with the package. Reports use it
        for their predicted speed-up whatever the target.
    granularity: any of "head", "row", "block", "unstructured".
    block_size: side of the square blocks of the "block" granularity, 16 or 32.
    prune_output_rows: with "row", also mask the output rows of attention-output
        and FFN-output linears (those channels then carry only the residual).
    initial_threshold / initial_score: starting values of every mask's
        threshold T and scores S (sigmoid(10) ~ 1 keeps nearly everything).
    magnitude_prior: add the L2 norm of the weights each unit controls, rescaled
        per mask to [0, magnitude_prior], to the initial scores, so Top-k's first
        cuts follow magnitude; 0 (the authors' recipe) starts all scores equal.
    lambda_f, lambda_min, lambda_small, small_penalty: the adaptive coefficient
        lambda = max(lambda_f * R / (1 - target)^2, lambda_min), or lambda_small
        when R < small_penalty.
    floor_ratios: floor each mask's keep ratio at 1/n in the regulariser.
    attention_length: the sequence length the model will serve. Given, the target
        counts work instead of weights: each head also costs what its attention
        does per token at that length (`leap.ATTENTION_COST` x length x head_dim
        weights' worth), so the regulariser trades a head against FFN rows at
        their cost in time. None (the default) counts weights alone.
    """

    target: float | None = None
    speedup: float | None = None
    cost_model: CostModel | None = None
    granularity: tuple[str, ...] = ("head", "row")
    block_size: int = 32
    prune_output_rows: bool = True
    initial_threshold: float = 10.0
    initial_score: float = 0.0
    magnitude_prior: float = 0.0
    lambda_f: float = 20000.0
    lambda_min: float = 50.0
    lambda_small: float = 10.0
    small_penalty: float = 3e-4
    floor_ratios: bool = True
    attention_length: int | None = None
    skip: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        gran = self.granularity
        if isinstance(gran, str):
            gran = (gran,)
        gran = tuple(dict.fromkeys(gran))
        object.__setattr__(self, "granularity", gran)
        object.__setattr__(self, "skip", tuple(self.skip))
        bad = [g for g in gran if g not in GRANULARITIES]
        if bad or not gran:
            raise ConfigError(
                f"granularity {self.granularity!r} is not valid: use one or more of {GRANULARITIES}"
            )
        if isinstance(self.cost_model, dict):
            object.__setattr__(self, "cost_model", CostModel.from_json(self.cost_model))
        if self.target is not None and self.speedup is not None:
            raise ConfigError(
                f"target={self.target!r} and speedup={self.speedup!r} are both set: give one, the share of the "
                "weights to keep (target) or how many times faster the model should run (speedup)"
            )
        if self.speedup is not None:
            if isinstance(self.speedup, bool) or not isinstance(self.speedup, (int, float)) or not 1.0 < self.speedup < math.inf:
                raise ConfigError(f"speedup={self.speedup!r} must be a number > 1: how many times faster than dense, e.g. 4")
            if self.attention_length is not None:
                raise ConfigError("attention_length charges heads in weights' worth; with speedup the cost model charges "
                                  "them in time already: drop attention_length")
        elif self.target is None:
            object.__setattr__(self, "target", 0.5)
        if self.cost_model is not None and not isinstance(self.cost_model, CostModel):
            raise ConfigError(f"cost_model must be a mlprune_fx.CostModel (mlprune_fx.calibrate), got {type(self.cost_model).__name__}")
        if self.target is not None and (not isinstance(self.target, (int, float)) or not 0.0 < float(self.target) <= 1.0):
            raise ConfigError(
                f"target={self.target!r} is outside (0, 1]: it is the fraction of encoder "
                "weights to keep, e.g. 0.2 keeps 20 %"
            )
        if self.block_size not in BLOCK_SIZES and "block" in gran:
            raise ConfigError(
                f"block_size={self.block_size!r} is not supported: use one of {BLOCK_SIZES}, the block sizes "
                "the native block-sparse kernel runs"
            )
        if not isinstance(self.magnitude_prior, (int, float)) or not 0 <= self.magnitude_prior < math.inf:
            raise ConfigError(
                f"magnitude_prior={self.magnitude_prior!r} must be a finite number >= 0: it is how far ahead "
                "of the weakest unit's score the strongest unit's starts (0 starts every score equal)"
            )
        length = self.attention_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ConfigError(
                f"attention_length={length!r} must be a whole number of tokens >= 1 (the length the model "
                "will serve, e.g. 128), or None to count weights alone"
            )
        if self.lambda_f < 0 or self.lambda_min < 0 or self.lambda_small < 0:
            raise ConfigError("lambda_f, lambda_min and lambda_small must be >= 0")

    def replace(self, **changes) -> "PruningConfig":
        if "speedup" in changes and "target" not in changes:
            changes["target"] = None
        if "target" in changes and "speedup" not in changes:
            changes["speedup"] = None
        return dataclasses.replace(self, **changes)

    @property
    def share(self) -> float:
        """What the regulariser drives rho to: the target, or 1 / speedup (rho is then latency over dense)."""
        return 1.0 / self.speedup if self.speedup is not None else float(self.target)

    def uses(self, granularity: str) -> bool:
        return granularity in self.granularity

    def skips(self, names: Iterable[str]) -> bool:
        return any(s and s in n for s in self.skip for n in names)
