"""User-facing errors.

Every problem a user can fix (a wrong file, an empty folder, a bad option) raises a subclass of
:class:`StvmError` with a one-line message that says what to fix. The CLI prints that line and
exits with code 2, without a traceback; everything else is a bug and keeps its traceback.

The public Python API raises the same classes with the same lines. Where Python code expects a
built-in exception, the class is one as well, so ``except ValueError`` keeps working:

- :class:`ConfigError` is a ``ValueError``: a configuration value, a size, a count or a config file
  that cannot be used (a wrong value of a public function's argument raises it too);
- :class:`ArgumentTypeError` is a ``TypeError`` (and a ``ConfigError``): an argument of a public function,
  or a config field, of the wrong type (``adapt(torch.zeros(3), ...)``, ``config=42``);
- :class:`ResourceError` is a ``MemoryError``: a batch, crop or buffer that does not fit in memory,
  refused before it is allocated, or an out-of-memory failure during a run, named with the option to
  lower (:func:`out_of_memory`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence


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


class ConfigError(StvmError, ValueError):
    """A configuration value or file is invalid (also a ``ValueError``)."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of a public function, or a config field, has the wrong type (also a ``TypeError``)."""


class ResourceError(StvmError, MemoryError):
    """A batch, crop or buffer too large for this machine, or an out-of-memory failure during a run;
    the line names the option to lower (also a ``MemoryError``)."""


class BackendUnavailableError(StvmError):
    """An explicitly requested backend (Triton, CUDA, TensorRT) cannot run here."""


class VerificationError(StvmError):
    """An exported artifact does not match the model it came from."""


class DivergedError(StvmError):
    """The adaptation produced a non-finite loss; nothing non-finite is saved."""


# What the allocators say when memory runs out: PyTorch's CPU allocator (Linux and Windows), CUDA's
# caching allocator and runtime, cuBLAS/cuDNN workspaces, MPS, ONNX Runtime.
_OOM_PHRASES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "failed to allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``MemoryError``, ``torch.cuda.OutOfMemoryError`` or a
    ``RuntimeError`` from an allocator (recognised by its words, so this module needs no torch)."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(phrase in text for phrase in _OOM_PHRASES)


def out_of_memory(exc: BaseException, knobs: Sequence[str]) -> ResourceError:
    """The one line for the allocation failure ``exc``: what ran out, and the ``knobs`` to lower
    (``["--batch-size (data.batch_size, now 8)", "--crop (data.crop, now 512x1024)"]``)."""
    if isinstance(exc, ResourceError):
        return exc
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "alloc" in line.lower()), lines[0] if lines else "")
    detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*(data\.\s*)?", "", detail)  # PyTorch's C++ location
    if len(detail) > 160:
        detail = detail[:157] + "..."
    where = "GPU" if ("cuda" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError") else "memory"
    what = f"out of {where} memory" if where == "GPU" else "out of memory"
    lower = " or ".join(knobs) if knobs else "the batch size or the image size"
    return ResourceError(f"{what}{f' ({detail})' if detail else ''}: lower {lower}")
