"""Content fingerprints of a run's inputs, so a resumed run can tell it is given the same ones.

A run records its source model (the file's SHA-256, or for an in-memory ``nn.Module`` the SHA-256 of
its weights) and its target frames (names, sizes and the first bytes of every frame) at the start;
``--resume`` with another model or another folder is refused instead of silently mixing two runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

_HEAD = 16 * 1024  # bytes of each frame hashed: enough to tell frames apart, cheap for 10k frames


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (engines and external-data files can be large); of a folder
    (a library's ``save_pretrained``), over its files' relative names and contents, in name order."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256(p, chunk).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def module_sha256(module: nn.Module) -> str:
    """Hex SHA-256 over a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frames_sha256(paths: Iterable[Path], base: Path) -> str:
    """Hex SHA-256 over the frames' relative names, sizes and first 16 KiB."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.relative_to(base).as_posix().encode() + b"\0")
        try:
            h.update(str(p.stat().st_size).encode())
            with open(p, "rb") as fh:
                h.update(fh.read(_HEAD))
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()
