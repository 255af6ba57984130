"""Training checkpoints for resuming: model, optimizer, scheduler, RNG, log and hold, without pickle.

Tensors go to safetensors, everything else to JSON. `store_run` / `restore_run` write and
read a whole loop's state in one folder; `save_training_state` / `load_training_state`
are the optimizer, scheduler and RNG part alone.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import CheckpointError
from ..serialization import unshared
from .log import TrainLog

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


MODEL_FILE = "model.safetensors"


def store_run(folder: Path, step: int, model: nn.Module, optimizer, scheduler, log: TrainLog, hold) -> None:
    """Everything `train` needs to go on from `step`: weights and masks, optimizer, scheduler, RNG, log, hold."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (MODEL_FILE + ".tmp")
    save_file(unshared(tensors), str(tmp))
    hold_state = {"engaged": hold.engaged, "adjust": hold.adjust, "before": hold.before, "after": hold.after,
                  "kept_at_hold": hold.kept_at_hold} if hold else None
    save_training_state(folder, step=step, optimizer=optimizer, scheduler=scheduler,
                        extra={"log": json.dumps(dataclasses.asdict(log)), "hold": json.dumps(hold_state)})
    tmp.replace(folder / MODEL_FILE)


def restore_run(folder: Path, model: nn.Module, optimizer, scheduler, hold) -> tuple[int, TrainLog]:
    """Load what `store_run` wrote into a model, optimizer, scheduler and hold built the same way."""
    weights = folder / MODEL_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing: nothing to resume from in {folder}")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated ({exc}); start again") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder} was saved from another model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    step, extra = load_training_state(folder, optimizer=optimizer, scheduler=scheduler)
    fields = {f.name for f in dataclasses.fields(TrainLog)}
    log = TrainLog(**{k: v for k, v in json.loads(extra["log"]).items() if k in fields})
    saved_hold = json.loads(extra["hold"])
    if hold is not None and saved_hold and saved_hold["engaged"]:
        hold.engaged = True
        hold.adjust, hold.before, hold.after = saved_hold["adjust"], saved_hold["before"], saved_hold["after"]
        hold.kept_at_hold = saved_hold.get("kept_at_hold")
    return step, log
