"""mlprune_fx: learned multilevel structured pruning for Transformer encoders.

prepare -> train with `regularization` -> convert -> export_onnx -> runtime.InferenceSession

The package by layer: `core` (config, errors, masks, pruning-state records, the LEAP
regulariser, the report), `passes` (graph analysis and rewrites), `runtime` (native
kernels, ONNX Runtime), the flow's entry points in this folder (prepare, convert,
export_onnx, save / load), `training` (the loop, the hold, distillation, Trainer) and
`tools` (CLI, demo, data, packaged model, plots, benchmarking helpers). docs/design.md
draws it.
"""

from . import runtime
from .calibrate import calibrate
from .convert import convert
from .core.config import PruningConfig
from .core.cost_model import CostModel
from .core.errors import (
    CaptureError,
    CheckpointError,
    ConfigError,
    ExampleInputsError,
    MLPruneError,
    NativeLibraryMissing,
    NotPreparedError,
    OrtLibraryMissing,
    UnsupportedModelError,
)
from .core.leap import Penalty, penalty, regularization
from .core.learnable_mask import LearnableMask
from .core.report import SparsityReport, sparsity_report
from .describe import describe
from .export import export_onnx
from .prepare import prepare
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CheckpointError",
    "ConfigError",
    "CostModel",
    "ExampleInputsError",
    "LearnableMask",
    "MLPruneError",
    "NativeLibraryMissing",
    "NotPreparedError",
    "OrtLibraryMissing",
    "Penalty",
    "PruningConfig",
    "SparsityReport",
    "UnsupportedModelError",
    "calibrate",
    "convert",
    "describe",
    "export_onnx",
    "load",
    "penalty",
    "prepare",
    "regularization",
    "runtime",
    "save",
    "sparsity_report",
]
