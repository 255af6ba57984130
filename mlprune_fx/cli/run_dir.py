"""A run directory: where each CLI step finds what the step before it wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A user-facing problem: printed without a traceback, exit status 2."""


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
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def dense_onnx(self) -> Path:
        return self.root / "dense.onnx"

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

    def need(self, path: Path, step: str) -> Path:
        if not path.exists():
            raise CLIError(f"{path} does not exist: run `mlprune {step} --run {self.root}` first")
        return path
