"""Errors raised to users. Each message says what was wrong and what to do."""


class MLPruneError(Exception):
    """Base class of every error mlprune_fx raises on purpose."""


class ConfigError(MLPruneError, ValueError):
    """A `PruningConfig` field is out of range or inconsistent with the model."""


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
