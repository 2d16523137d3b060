"""Fixtures for the kernel tests.

``TRITON_INTERPRET=1`` must be in the environment before any ``@triton.jit`` decorates
(docs/environment.md), so it is set here, first. The ``stvm_sdk.kernels.*_triton`` modules are
imported only on the first Triton dispatch, so this works even when another test folder imported
``stvm_sdk.kernels`` earlier. On a machine with CUDA the interpreter stays off and the same tests run
the compiled kernels on the GPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed torch and drop a developer's STVM_KERNEL_BACKEND so dispatch tests see the defaults."""
    torch.manual_seed(0)
    monkeypatch.delenv("STVM_KERNEL_BACKEND", raising=False)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the Triton-vs-reference tests run: the GPU when there is one, else CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    """The GPU for ``gpu``-marked tests; skips them without CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def triton_ok() -> None:
    """Skip Triton-vs-reference tests where Triton is not installed (the reference still runs)."""
    pytest.importorskip("triton")
