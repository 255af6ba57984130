"""mlprune_fx: learned multilevel structured pruning for Transformer encoders.

prepare -> train with `regularization` -> convert -> export_onnx -> runtime.InferenceSession
"""

from . import runtime
from .config import PruningConfig
from .convert import convert
from .describe import describe
from .errors import (
    CaptureError,
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

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
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
    "penalty",
    "prepare",
    "regularization",
    "runtime",
    "sparsity_report",
]
