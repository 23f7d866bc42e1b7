"""User-facing errors: each one is printed by the CLI as a single line, without a traceback.

Anything that is not an `EdgecError` is a bug in edgec and keeps its traceback.
"""


class EdgecError(Exception):
    """A mistake in what the user asked for, with the fix in the message."""


class ModelImportError(EdgecError):
    """The model file cannot be read or converted (format, opset, symbolic shape)."""


class UnsupportedOperatorError(ModelImportError):
    """An operator of the model has no converter in this version."""


class TargetError(EdgecError):
    """An unknown target name or an unusable target description."""


class ToolchainError(EdgecError):
    """A compiler or emulator that the target needs is not installed."""


class ArtifactError(EdgecError):
    """A compiled artifact is missing, corrupt or not runnable here."""


class InputError(EdgecError):
    """Inputs given to a run do not match what the model expects."""


class RunnerError(EdgecError):
    """The C++ runner rejected its inputs or the model library (its exit code 2), or timed out."""


class RemoteError(EdgecError):
    """An RPC tracker or server cannot be reached, has no free device, or went away during a run."""


class BenchError(EdgecError):
    """A benchmark setting is out of range, or the device cannot be benchmarked yet."""


class TuningError(EdgecError):
    """A tuning run cannot start or its records cannot be used: preset, budget, database or device."""


class PhaseError(EdgecError):
    """A compiler phase failed inside TVM on this model; the message names the phase and the operator."""
