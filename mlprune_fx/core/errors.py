"""Every error mlprune_fx raises on purpose. Each message says what was wrong and what to do.

All derive from `MLPruneError`; each also keeps the builtin base callers would catch
(`ValueError` for bad values, `FileNotFoundError` for a missing file, ...).
"""


class MLPruneError(Exception):
    """Base class of every error mlprune_fx raises on purpose."""


class ConfigError(MLPruneError, ValueError):
    """A setting is out of range or inconsistent with the model: `PruningConfig`, training, distillation."""


class ExampleInputsError(MLPruneError, ValueError):
    """The example inputs given to `prepare` cannot drive a capture."""


class CaptureError(MLPruneError, RuntimeError):
    """`torch.export` could not capture the model."""


class UnsupportedModelError(MLPruneError, ValueError):
    """The captured graph holds nothing mlprune_fx knows how to prune."""


class NotPreparedError(MLPruneError, TypeError):
    """A function that needs a prepared (or converted) model got something else."""


class CheckpointError(MLPruneError, ValueError):
    """A saved model is corrupt, truncated, of another format, or does not match."""


class DataError(MLPruneError, ValueError):
    """A dataset cannot be read, or lacks the columns and labels asked for."""


class CLIError(MLPruneError):
    """A problem with a command-line run: printed without a traceback, exit status 2."""


class BuildError(MLPruneError, RuntimeError):
    """The native libraries could not be built; the message says what is missing and how to fix it."""


class NativeLibraryMissing(MLPruneError, RuntimeError):
    """The compiled PyTorch kernel library is not there; build it first."""


class MissingFileError(MLPruneError, FileNotFoundError):
    """A file or an installed asset mlprune_fx needs is not there: a model, an ONNX file, a package."""


class OrtLibraryMissing(MissingFileError):
    """The ONNX Runtime custom-op library has not been built."""


class OrtLibraryLoadError(MLPruneError, RuntimeError):
    """ONNX Runtime refused the custom-op library (built against another version); rebuild it."""


class UnsupportedStructure(UnsupportedModelError):
    """One block's data flow is not understood. The analysis catches it and leaves the block alone,
    with the message as the reason `describe` prints."""
