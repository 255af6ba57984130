"""Training state for resuming: optimizer, scheduler, RNG and loop counters, without pickle.

Tensors go to safetensors, everything else to JSON. The model itself is saved with
`mlprune_fx.save` (prepared models) or `save_pretrained` (plain HF models) beside it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

STATE_FILE = "training_state.json"
TENSOR_FILE = "training_state.safetensors"


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `obj` with every tensor moved to `tensors` under a path key."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, "", {}) if not isinstance(k, (str, int)) else k, _split(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a training checkpoint (at {prefix})")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_join(v, tensors) for v in obj["__list__"]]
    return obj


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": list(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_json(state: list) -> list:
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in state]


def save_training_state(folder: str | Path, *, step: int, optimizer, scheduler=None, extra: dict | None = None) -> Path:
    """Write what a resumed loop needs to continue exactly where this one stopped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = rng_state()
    rng["numpy"] = _numpy_json(rng["numpy"])
    tensors: dict[str, torch.Tensor] = {}
    record = {
        "step": step,
        "optimizer": _split(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _split(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
        "rng": _split(rng, "rng", tensors),
        "extra": _split(extra or {}, "extra", tensors),
    }
    tmp_json, tmp_tensors = folder / (STATE_FILE + ".tmp"), folder / (TENSOR_FILE + ".tmp")
    save_file(tensors, str(tmp_tensors))
    tmp_json.write_text(json.dumps(record))
    tmp_tensors.replace(folder / TENSOR_FILE)
    tmp_json.replace(folder / STATE_FILE)
    return folder


def load_training_state(folder: str | Path, *, optimizer, scheduler=None) -> tuple[int, dict]:
    """Restore optimizer, scheduler and RNG; return (step, extra)."""
    folder = Path(folder)
    if not (folder / STATE_FILE).exists() or not (folder / TENSOR_FILE).exists():
        raise CheckpointError(f"{folder} holds no training state ({STATE_FILE} + {TENSOR_FILE}); nothing to resume")
    try:
        tensors = load_file(str(folder / TENSOR_FILE))
        record = json.loads((folder / STATE_FILE).read_text())
    except Exception as exc:
        raise CheckpointError(f"the training state in {folder} is corrupt or truncated ({exc}); start again") from exc
    try:
        optimizer.load_state_dict(_join(record["optimizer"], tensors))
        if scheduler is not None and record["scheduler"] is not None:
            scheduler.load_state_dict(_join(record["scheduler"], tensors))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"the training state in {folder} does not match this model or optimizer: {exc}") from exc
    set_rng_state(_join(record["rng"], tensors))
    return int(record["step"]), _join(record["extra"], tensors)
