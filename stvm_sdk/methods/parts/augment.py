"""Strong photometric augmentation of the student's (mixed) input (decision 7).

Per-sample colour jitter (brightness, contrast, saturation) and Gaussian blur, with every random
number drawn from an explicit generator. Geometry is untouched, so labels and weights stay aligned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as nnf
from torch import Tensor

if TYPE_CHECKING:
    from stvm_sdk.methods.parts.options import AugConfig

_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device) -> Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=g, device="cpu")).to(device).view(n, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int = 4) -> Tensor:
    """Separable blur of ``[B,3,H,W]`` with a per-sample ``sigma [B]`` (reflect padding)."""
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.view(b, 1)) ** 2)
    k = k / k.sum(1, keepdim=True)  # [B, 2r+1]
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    kh = k[:, radius - pad_h : radius + pad_h + 1]
    kw = k[:, radius - pad_w : radius + pad_w + 1]
    y = nnf.pad(x.reshape(1, b * c, h, w), (pad_w, pad_w, 0, 0), mode="reflect")
    y = nnf.conv2d(y, kw.repeat_interleave(c, 0).view(b * c, 1, 1, -1), groups=b * c)
    y = nnf.pad(y, (0, 0, pad_h, pad_h), mode="reflect")
    y = nnf.conv2d(y, kh.repeat_interleave(c, 0).view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def strong_augment(x: Tensor, cfg: AugConfig, g: torch.Generator | None) -> Tensor:
    """Colour jitter then blur, each applied per sample with its probability. ``x`` in [0,1]."""
    b, dev = x.shape[0], x.device
    jit = (torch.rand(b, generator=g, device="cpu") < cfg.jitter_prob).to(dev).view(b, 1, 1, 1)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, g, dev)
    contrast = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, dev)
    sat = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, g, dev)
    y = (x * bright).clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = (mean + contrast * (y - mean)).clamp(0, 1)
    gray = _gray(y)
    y = (gray + sat * (y - gray)).clamp(0, 1)
    x = torch.where(jit, y, x)
    blur = (torch.rand(b, generator=g, device="cpu") < cfg.blur_prob).to(dev).view(b, 1, 1, 1)
    sigma = _uniform(b, *cfg.blur_sigma, g, dev).view(b)
    return torch.where(blur, gaussian_blur(x, sigma), x)
