"""mlprune_fx: learned multilevel structured pruning for Transformer encoders.

prepare -> train with `regularization` -> convert -> export_onnx -> runtime.InferenceSession
"""

from . import runtime
from .config import PruningConfig
from .convert import convert
from .describe import describe
from .errors import (
    CaptureError,
    CheckpointError,
    ConfigError,
    ExampleInputsError,
    MLPruneError,
    NotPreparedError,
    UnsupportedModelError,
)
from .export import export_onnx
from .leap import Penalty, penalty, regularization
from .masks import LearnableMask
from .prepare import prepare
from .report import SparsityReport, sparsity_report
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CheckpointError",
    "ConfigError",
    "ExampleInputsError",
    "LearnableMask",
    "MLPruneError",
    "NotPreparedError",
    "Penalty",
    "PruningConfig",
    "SparsityReport",
    "UnsupportedModelError",
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
