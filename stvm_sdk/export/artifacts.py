"""Writing deployment artifacts safely: staging folders, atomic renames, hashes and tool versions.

Every artifact is first written under a hidden staging name in the destination folder and renamed
into place only once it is complete and checked, so an interrupted or failed export never leaves a
half-written file under the final name (``os.replace`` is atomic within one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from stvm_sdk.boundary.outputs import write_error
from stvm_sdk.runners.contract import SIDECAR_FORMAT

__all__ = ["SIDECAR_FORMAT", "publish", "staging_dir", "tool_versions"]


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``final`` for building its artifacts; always removed afterwards."""
    stage = final.parent / f".{final.name}.staging-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as exc:
        raise write_error(exc, stage) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(staged: Path, final: Path) -> Path:
    """fsync ``staged`` and atomically rename it to ``final`` (replacing an older file)."""
    try:
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, final)
    except OSError as exc:
        raise write_error(exc, final) from None
    return final


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that shaped an artifact (None when a tool is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("stvm_sdk", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return {k: v for k, v in out.items() if v is not None}
