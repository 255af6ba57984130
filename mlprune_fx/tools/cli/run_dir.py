"""A run directory: where each CLI step finds what the step before it wrote."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlprune_fx.core.errors import CLIError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def dense(self) -> Path:
        return self.root / "dense"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def converted(self) -> Path:
        return self.root / "converted"

    @property
    def cost_model(self) -> Path:
        """What `mlprune calibrate` wrote: the cost model `prune --speedup` uses."""
        return self.root / "cost_model.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def dense_onnx(self) -> Path:
        return self.root / "dense.onnx"

    @property
    def dense_ort_int8(self) -> Path:
        """The dense model through ONNX Runtime's quantize_dynamic: what a user would deploy without pruning."""
        return self.root / "dense_ort_int8.onnx"

    def record(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def read(self, name: str, default: Any = None) -> Any:
        path = self.record(name)
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CLIError(f"{path} is not valid JSON ({exc}); delete it and run that step again") from exc

    def write(self, name: str, data: Any) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.record(name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(path)
        return path

    def write_step(self, name: str, data: dict, inputs: tuple[str, ...] = ()) -> Path:
        """A step's record, with a fresh id and the ids of the records of the steps it read."""
        ids = {n: (self.read(n) or {}).get("id") for n in inputs}
        return self.write(name, {**data, "id": uuid.uuid4().hex, "from": {n: i for n, i in ids.items() if i}})

    def dense_source(self) -> tuple[str | Path, str] | None:
        """The dense model the pruned one started from and the step that chose it: prune's `--model`,
        else RUN/dense from finetune; None when there is neither."""
        model = (self.read("prune") or {}).get("model")
        if model:
            return model, "prune"
        return (self.dense, "finetune") if self.dense.exists() else None

    def converted_by(self) -> str:
        """The step that wrote RUN/converted: `convert`, or `prune` itself for two-step pruning."""
        return "prune" if (self.read("prune") or {}).get("mode") == "two-step" else "convert"

    def model_steps(self) -> tuple[str, ...]:
        """The steps that made RUN/model.onnx, in order."""
        return tuple(dict.fromkeys(("prune", self.converted_by(), "export")))

    def check_current(self, steps: tuple[str, ...]) -> None:
        """Refuse to go on from a step whose inputs were remade after it ran (its output is stale)."""
        for name in steps:
            for up, used in ((self.read(name) or {}).get("from") or {}).items():
                now = (self.read(up) or {}).get("id")
                if now is not None and now != used:
                    raise CLIError(f"`mlprune {up}` ran again after `mlprune {name}`, so what {name} wrote in {self.root} "
                                   f"is out of date: run `mlprune {name} --run {self.root}` (and the steps after it) again")

    def need(self, path: Path, step: str) -> Path:
        if not path.exists():
            raise CLIError(f"{path} does not exist: run `mlprune {step} --run {self.root}` first")
        return path
