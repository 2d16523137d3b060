"""User-facing errors.

Every problem a user can fix (a wrong file, an empty folder, a bad option) raises a subclass of
:class:`StvmError` with a one-line message that says what to fix. The CLI prints that line and
exits with code 2, without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StvmError(Exception):
    """A problem the user can fix; the message is one actionable line."""

    exit_code = 2


class ModelLoadError(StvmError):
    """The model file cannot be read or does not satisfy the model contract."""


class DataError(StvmError):
    """The image or label folder cannot be used (empty, unreadable, mismatched)."""


class OutputError(StvmError):
    """An output cannot be written where asked: a folder the SDK did not make, an input in the way,
    a read-only folder, a full disk. Nothing of the user's is changed when this is raised."""


class ConfigError(StvmError):
    """A configuration value or file is invalid."""


class BackendUnavailableError(StvmError):
    """An explicitly requested backend (Triton, CUDA, TensorRT) cannot run here."""


class VerificationError(StvmError):
    """An exported artifact does not match the model it came from."""


class DivergedError(StvmError):
    """The adaptation produced a non-finite loss; nothing non-finite is saved."""
