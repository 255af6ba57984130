"""A cost model of the deployed encoder: what its ONNX Runtime latency will be, from what its masks keep.

Per token of a `batch` x `seq` input, in nanoseconds, a converted encoder costs

    weight_ns       x  kept weights of dense (compacted) linears
  + block_weight_ns x  kept weights of block-sparse matrices (kept-block density below max_block_density)
  + head_ns         x  kept heads x seq x head_dim        (a head's attention grows with the sequence)
  + fixed_ns        x  hidden x layers                    (LayerNorms, residual adds, embeddings, classifier)
  + scatter_ns      x  hidden x matrices whose pruned output rows are compacted away (their output is
                       scattered into the residual stream with index_add instead of added to it)

Each term is a count the masks decide, so the prediction is differentiable through the keep ratios
the regulariser already uses. The coefficients are fitted on the deployment machine by
`mlprune_fx.calibrate` (a few converted variants of the model, timed); `default_cost_model()` is one
such fit shipped with the package, for users who do not calibrate. Predicted speed-ups are ratios of
two predictions, so what the coefficients share (the machine's speed) cancels.

The scatter is the one shape choice the terms leave open: an attention-output or FC2 matrix whose output
rows are pruned can be compacted (fewer weights, one scatter) or kept whole with its pruned rows zero (no
scatter); both compute the same. `compacting_pays` picks the cheaper, and convert does what it says.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError, ConfigError

DEFAULT_COST_MODEL = Path(__file__).with_name("default_cost_model.json")
FORMAT = "mlprune_fx.cost_model"


@dataclass(frozen=True)
class CostModel:
    """Fitted coefficients (ns per token) and what they were fitted on."""

    weight_ns: float
    block_weight_ns: float
    head_ns: float
    fixed_ns: float
    scatter_ns: float = 0.0  # 0 in files written before it was fitted: compacting then always pays, as it did
    batch: int = 8
    seq: int = 128
    threads: int | None = None
    quantize: str | None = None
    max_block_density: float = 0.7
    machine: dict[str, str] = field(default_factory=dict)  # runtime.timing.cpu_description() where fitted
    model: dict[str, int] = field(default_factory=dict)  # hidden, heads, head_dim, layers, ffn of the model fitted on
    fit: dict[str, float] = field(default_factory=dict)  # how well the fit matched its own timings

    def __post_init__(self) -> None:
        for name in ("weight_ns", "block_weight_ns", "head_ns", "fixed_ns", "scatter_ns"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"cost model: {name}={value!r} must be a number >= 0")
        if self.weight_ns <= 0:
            raise ConfigError("cost model: weight_ns must be > 0 (kept weights must cost something)")

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def ms(self, dense_weights: float, block_weights: float, heads_x_dim: float, hidden_x_layers: float,
           scattered: float = 0.0) -> float:
        """Predicted latency in ms for these counts (heads_x_dim: kept heads times their head_dim; scattered:
        the output widths of the matrices whose output rows are compacted)."""
        ns = (self.weight_ns * dense_weights + self.block_weight_ns * block_weights
              + self.head_ns * self.seq * heads_x_dim + self.fixed_ns * hidden_x_layers + self.scatter_ns * scattered)
        return ns * self.tokens * 1e-6

    def compacting_pays(self, out_features: int, in_features: int, kept_rows: int) -> bool:
        """Whether dropping a matrix's pruned output rows (and scattering its output) beats keeping them as
        zero rows: the weights it saves against the scatter it adds."""
        if kept_rows >= out_features:
            return False
        if kept_rows == 0:
            return True  # nothing left to scatter: the matrix and its residual add go
        return self.weight_ns * (out_features - kept_rows) * in_features > self.scatter_ns * out_features

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def from_json(cls, data: dict) -> "CostModel":
        if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
            raise CheckpointError("not an mlprune_fx cost model (write one with mlprune_fx.calibrate or `mlprune calibrate`)")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"format"})
        if unknown:
            raise CheckpointError(f"cost model has unknown fields {unknown}; it was written by another mlprune_fx")
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise CheckpointError(f"cost model is incomplete: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"no cost model at {path}: write one with `mlprune calibrate` or mlprune_fx.calibrate") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not a readable cost model ({exc})") from exc
        return cls.from_json(data)

    def check_fits(self, model: dict[str, int], machine: dict[str, str] | None = None) -> None:
        """Warn when this model was fitted on another model shape or another machine than `model` / `machine`."""
        differs = [f"{k} {self.model[k]} here {model[k]}" for k in model if k in self.model and self.model[k] != model[k]]
        if machine is not None:
            differs += [f"{k} '{self.machine[k]}' here '{machine[k]}'" for k in machine
                        if k in self.machine and self.machine[k] != machine[k]]
        if differs:
            warnings.warn("the cost model was calibrated elsewhere (" + "; ".join(differs) + "): its predictions may be "
                          "off here; calibrate on the deployment machine (`mlprune calibrate`)", stacklevel=3)


@functools.lru_cache(maxsize=1)
def default_cost_model() -> CostModel:
    """The fit shipped with the package (see BENCHMARKS.md, "The cost model"), for users who do not calibrate."""
    return CostModel.load(DEFAULT_COST_MODEL)
