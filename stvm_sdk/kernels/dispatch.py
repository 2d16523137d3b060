"""Backend choice for the hot ops: fused Triton kernels or the pure-PyTorch reference.

Order of precedence (first that applies wins):

1. An export or trace is running (``exporting()``, ``torch.onnx.is_in_onnx_export()``,
   ``torch.jit.is_scripting()/is_tracing()``, ``torch.compiler.is_exporting()``) or ``torch.compile``
   is tracing: the reference, always. Exporters and compilers see plain torch ops (timm's
   "exportable" idea); inductor generates its own fused kernels from them.
2. ``backend`` argument ``"triton"`` or ``"torch"``: used as asked. ``"triton"`` that cannot run raises
   :class:`~stvm_sdk.errors.BackendUnavailableError` saying why and what to do.
3. ``backend="auto"`` and env ``STVM_KERNEL_BACKEND`` set to ``triton``/``torch``: treated as asked
   explicitly (so a misconfigured machine fails loudly instead of silently going slow).
4. ``auto``: Triton when every tensor is on CUDA, Triton imports and the dtypes are supported;
   otherwise the reference, quietly (CPU tensors get the reference even under ``TRITON_INTERPRET``).

Triton kernels run on CPU tensors only under ``TRITON_INTERPRET=1`` (tests). The ``*_triton`` modules
are imported on the first Triton dispatch, never at ``import stvm_sdk.kernels``: the interpreter flag
is read when ``@triton.jit`` decorates, so a test conftest that sets it works whatever was imported
first, and ``import stvm_sdk`` works without Triton.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from stvm_sdk.errors import BackendUnavailableError, ConfigError

Backend = Literal["triton", "torch"]
BACKENDS = ("auto", "triton", "torch")
ENV_BACKEND = "STVM_KERNEL_BACKEND"
# Logit/embedding/image dtypes the Triton kernels take (fp64 goes to the reference, e.g. gradcheck).
TRITON_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_export_state = threading.local()


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """Force the pure-PyTorch reference for every kernel op inside the block (nestable, per thread).

    Use around ``torch.onnx.export``/``torch.export``/tracing of code that calls these ops.
    """
    _export_state.depth = getattr(_export_state, "depth", 0) + 1
    try:
        yield
    finally:
        _export_state.depth -= 1


def is_exporting() -> bool:
    """True when an export, trace or compile is running, so the reference must be used."""
    if getattr(_export_state, "depth", 0) > 0:
        return True
    if torch.onnx.is_in_onnx_export() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    for probe in ("is_exporting", "is_compiling"):
        fn = getattr(compiler, probe, None)
        if fn is not None and fn():
            return True
    return False


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    """Why ``import triton`` fails here, or None when it works (cached: imports are not free)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return f"{type(exc).__name__}: {exc}"
    return None


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels on CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _triton_blocker(tensors: tuple[Tensor, ...], float_tensors: tuple[Tensor, ...]) -> str | None:
    """Why the Triton kernels cannot run on these tensors, or None when they can."""
    # Devices and dtypes first: on a CPU-only run `auto` must not pay for (or depend on) importing Triton.
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        if not torch.cuda.is_available():
            return "CUDA tensors were given but CUDA is not available"
    elif devices == {"cpu"}:
        if not interpreter_enabled():
            return "Triton needs CUDA tensors (got CPU ones); TRITON_INTERPRET=1 runs it on CPU, slowly"
    else:
        return f"Triton needs all tensors on one CUDA device, got devices {sorted(devices)}"
    bad = [t.dtype for t in float_tensors if t.dtype not in TRITON_FLOAT_DTYPES]
    if bad:
        return f"the Triton kernels take fp32/fp16/bf16, got {bad[0]}"
    err = _triton_import_error()
    if err is not None:
        return f"Triton does not import ({err}); install it (it ships with CUDA builds of torch)"
    return None


def resolve_backend(
    backend: str, tensors: tuple[Tensor, ...], float_tensors: tuple[Tensor, ...] = ()
) -> Backend:
    """Pick the backend for one call (see the module docstring for the rules).

    Args:
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
        tensors: every tensor input of the op (devices are checked).
        float_tensors: the inputs whose dtype the Triton kernel must support.

    Raises:
        ConfigError: ``backend`` or ``STVM_KERNEL_BACKEND`` is not one of auto/triton/torch.
        BackendUnavailableError: Triton was asked for explicitly and cannot run.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if is_exporting():
        return "torch"
    source = "backend argument"
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "").strip().lower()
        if env not in ("",) + BACKENDS:
            raise ConfigError(f"{ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
        if env in ("triton", "torch"):
            backend, source = env, f"{ENV_BACKEND}={env}"
    if backend == "torch":
        return "torch"
    if backend == "auto":
        # The interpreter is for tests: `auto` never sends CPU tensors to it, even when it is on.
        on_cuda = all(t.device.type == "cuda" for t in tensors)
        return "triton" if on_cuda and _triton_blocker(tensors, float_tensors) is None else "torch"
    blocker = _triton_blocker(tensors, float_tensors)
    if blocker is not None:
        raise BackendUnavailableError(
            f"kernel backend 'triton' was requested ({source}) but cannot run: {blocker}. "
            f"Use backend='torch' (or 'auto') to run the PyTorch reference."
        )
    return "triton"


def load_triton_module(op: str) -> ModuleType:
    """Import ``stvm_sdk.kernels.<op>_triton`` (decorating its kernels) on first use."""
    return importlib.import_module(f"stvm_sdk.kernels.{op}_triton")
