"""Test support that must be importable by name (pickled models, subprocess workers): not a conftest."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

# Class k is drawn with colour PALETTE[k] (+ noise): a model can learn it, and labels are exact.
PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180]], dtype=np.uint8
)


def make_frames(
    root: Path, n: int = 6, size: tuple[int, int] = (32, 64), seed: int = 0, nested: bool = True
) -> tuple[Path, Path]:
    """Write ``n`` frames of coloured blocks to ``root/images`` and trainId labels to ``root/labels``."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    for i in range(n):
        h, w = size
        lab = np.zeros(size, dtype=np.uint8)
        lab[: h // 3] = 4
        lab[h // 3 :, : w // 2] = rng.integers(0, 4)
        lab[h // 3 :, w // 2 :] = rng.integers(0, 4)
        img = PALETTE[lab].astype(np.int16) + rng.integers(-20, 20, (*size, 3))
        sub = Path(f"seq{i % 2}") if nested else Path()
        (images / sub).mkdir(parents=True, exist_ok=True)
        (labels / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / sub / f"f{i}.png")
        Image.fromarray(lab).save(labels / sub / f"f{i}.png")
    return images, labels


class TinySegNet(nn.Module):
    """A 5-class segmentation net with BatchNorm and a `classifier` head (conv-bn-relu-conv)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))
        return {
            "out": nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        }


def tree_hashes(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (links recorded by their target)."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def _caps(new_effective: int | None = None) -> int:
    """This thread's effective capability bits (low word); set them first when ``new_effective``."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    if new_effective is not None:
        data[0].effective = new_effective
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
    return int(data[0].effective)


@contextlib.contextmanager
def honour_permissions() -> Iterator[None]:
    """Make file permissions apply to this thread even as root, so a read-only folder is read-only.

    Root bypasses permission bits through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; dropping them from
    the calling thread's effective set (and restoring them after) makes ``chmod 0o555`` mean what it
    says, with no mock: the kernel refuses the write. A no-op for ordinary users.
    """
    if os.geteuid() != 0:
        yield
        return
    before = _caps()
    _caps(before & ~((1 << 1) | (1 << 2)))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    try:
        yield
    finally:
        _caps(before)


class HeadProbeNet(nn.Module):
    """A 5-class net laid out like segmentation_models_pytorch: no known classifier name, its head
    ``segmentation_head`` = conv (K outputs), a parameter-free upsampling and a parameter-free
    activation; optionally a dropout before the head. Returns a bare tensor (or a tuple with an
    auxiliary output, the first element being the logits)."""

    def __init__(self, num_classes: int = 5, tuple_out: bool = False) -> None:
        super().__init__()
        self.tuple_out = tuple_out
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout2d(0.5)
        self.segmentation_head = nn.Sequential(
            # smp's Activation wraps an Identity: the last leaf is two levels below the head
            nn.Conv2d(16, num_classes, 1),
            nn.UpsamplingBilinear2d(scale_factor=4),
            nn.Sequential(nn.Identity()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        logits = self.segmentation_head(self.dropout(feats))
        return (logits, feats) if self.tuple_out else logits


class _FirstChannels(nn.Module):
    """Keeps the first ``k`` channels (no parameters)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.k]


class WeakHeadNet(nn.Module):
    """A 5-class net whose logits come out of a parameter-free module (no conv has 5 outputs): the
    classifier can only be guessed weakly."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(8, 8, 1), _FirstChannels(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def sigkill_when(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (its first checkpoint); the caller checks that it
    was killed and did not finish first (``proc.returncode == -signal.SIGKILL``)."""
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator[object]:
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks/ on the path meanwhile,
    as when it runs as a script, so its sibling imports resolve)."""
    import importlib
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
