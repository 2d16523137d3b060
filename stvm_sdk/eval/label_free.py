"""Label-free validators: rank segmentation models on unlabelled frames, and the deploy gate.

A validator turns one model's outputs on a set of unlabelled frames into a score, higher meaning "more
likely better"; the run uses one to choose which snapshot to deliver, and to tell whether the delivered
model is worse than the source model it started from. Each validator is kept as *per-frame sufficient
statistics* (``[N, D]``) and a ``reduce`` of their sum, so a score is ``reduce(stats.sum(0))`` and a
paired bootstrap over frames is a matrix product (:func:`compare`).

Validators (docs/method.md, decision 15, has which of them hold up, where, and the evidence):

- ``confidence``: mean max-softmax; ``neg_entropy``: minus the mean entropy / log K.
- ``im``: information maximisation, H(mean prediction) - mean H(prediction), both / log K: confident
  *and* using the classes (a collapse lowers the first term).
- ``consistency``: the mean IoU, over the classes the source model predicts on the frames, between the
  prediction on each frame and on two transformed copies (flipped and darkened; shrunk by 3/4), mapped
  back; a class the model no longer predicts scores 0, so a collapse cannot look consistent.
- ``im_consistency``: ``im`` + ``consistency``.
- ``snd``: soft neighbourhood density (Saito et al., 2021) of the softmax outputs of a grid of pixels
  inside each frame: the mean entropy of each pixel's similarity distribution to the others.
- ``source_agreement``: mean IoU between the model's and the source model's predictions (source classes).
- ``ensemble``: mean IoU against the argmax of the mean softmax of a pool of models (e.g. a run's
  snapshots and the source model), as ensemble validation does (source classes).

The collapse rule is the stream's :class:`~stvm_sdk.stream.settings.HealthRule`: class histogram
divergence from the source model's predictions, the share of its classes still predicted, and a mean
confidence that says certain everywhere. Pure torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.config import VALIDATORS
from stvm_sdk.eval.metrics import _resample_counts

__all__ = ["VALIDATORS", "Outputs", "Statistic", "compare", "model_outputs", "pool_labels", "statistics"]
GRID = 8  # every 8th pixel in each direction: the pixels SND compares and the pool's kept softmax
SND_TEMPERATURE = 0.05  # as in Saito et al.


@dataclass
class Outputs:
    """One model's outputs on the held-out frames: what every validator reads."""

    pred: Tensor  # [N,H,W] int64 argmax on the frames
    views: list[Tensor]  # [N,H,W] argmax on each transformed copy, mapped back to the frame
    grid_probs: Tensor  # [N,K,h,w] softmax on a pixel grid (every GRID-th pixel)
    stats: dict[str, Tensor] = field(default_factory=dict)  # per-frame sums: conf, ent, probs, pixels
    finite: bool = True

    @property
    def num_classes(self) -> int:
        return int(self.grid_probs.shape[1])

    def histogram(self) -> Tensor:
        """``[N,K]`` pixels per predicted class, per frame."""
        k = self.num_classes
        flat = self.pred.flatten(1).long()
        return torch.zeros(flat.shape[0], k, dtype=torch.float64).scatter_add_(
            1, flat, torch.ones_like(flat, dtype=torch.float64)
        )


def _views(x: Tensor) -> list[tuple[Tensor, Callable[[Tensor], Tensor]]]:
    """Transformed copies of images ``x`` in [0,1] and the map that brings each copy's logits back."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * 0.75)), max(1, round(w * 0.75)))

    def unflip(logits: Tensor) -> Tensor:
        return logits.flip(-1)

    def grow(logits: Tensor) -> Tensor:
        return nnf.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

    flipped = (x.flip(-1) * 0.8).clamp(0, 1)  # mirrored and darker
    shrunk = nnf.interpolate(x, size=small, mode="bilinear", align_corners=False)
    return [(flipped, unflip), (shrunk, grow)]


@torch.no_grad()
def model_outputs(
    forward: Callable[[Tensor], Tensor], images: Tensor, *, batch_size: int = 8, views: bool = True
) -> Outputs:
    """Run ``forward`` (images in [0,1] ``[B,3,H,W]`` -> logits ``[B,K,H,W]``) on ``images`` and keep
    what the validators need; ``views`` off skips the transformed copies (``consistency`` then has none).
    A copy the model cannot take (a network traced at one input size) is left out; labels are kept as
    bytes where the classes allow (32 frames of 512x1024 are 16 MB a copy)."""
    preds: list[Tensor] = []
    grid: list[Tensor] = []
    view_preds: list[list[Tensor]] = [[], []]
    conf, ent, psum, pixels = [], [], [], []
    finite, usable = True, [True, True]
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        logits = forward(x).float()
        finite &= bool(torch.isfinite(logits).all())
        logits = torch.nan_to_num(logits)
        p = logits.softmax(1)
        k = p.shape[1]
        preds.append(_compact(logits.argmax(1), k))
        grid.append(p[:, :, GRID // 2 :: GRID, GRID // 2 :: GRID].clone())
        conf.append(p.amax(1).flatten(1).sum(1).double())
        h = -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(max(k, 2))
        ent.append(h.flatten(1).sum(1).double())
        psum.append(p.flatten(2).sum(2).double())
        pixels.append(torch.full((x.shape[0],), float(p[0, 0].numel()), dtype=torch.float64))
        for j, (copy, back) in enumerate(_views(x) if views else []):
            if usable[j]:
                try:
                    view_preds[j].append(_compact(back(torch.nan_to_num(forward(copy).float())).argmax(1), k))
                except (RuntimeError, ValueError):  # e.g. a traced network's fixed input size
                    usable[j], view_preds[j] = False, []
    stats = {
        "conf": torch.cat(conf),
        "ent": torch.cat(ent),
        "probs": torch.cat(psum),
        "pixels": torch.cat(pixels),
    }
    return Outputs(
        pred=torch.cat(preds),
        views=[torch.cat(v) for v in view_preds if v],
        grid_probs=torch.cat(grid),
        stats=stats,
        finite=finite,
    )


def _compact(labels: Tensor, k: int) -> Tensor:
    return labels.to(torch.uint8 if k <= 256 else torch.int32)


def _overlap(a: Tensor, b: Tensor, k: int) -> Tensor:
    """``[N,3,K]`` per frame: pixels of each class in both, in ``a``, in ``b``."""
    n = a.shape[0]
    a, b = a.flatten(1).long(), b.flatten(1).long()
    one = torch.ones_like(a, dtype=torch.float64)
    both = torch.zeros(n, k, dtype=torch.float64).scatter_add_(1, a, (a == b).double())
    in_a = torch.zeros(n, k, dtype=torch.float64).scatter_add_(1, a, one)
    in_b = torch.zeros(n, k, dtype=torch.float64).scatter_add_(1, b, one)
    return torch.stack([both, in_a, in_b], 1)


def _miou_over(counts: Tensor, classes: Tensor) -> Tensor:
    """Mean IoU over ``classes`` (a ``[K]`` bool mask) from summed ``[..., 3, K]`` overlaps; a class
    neither side predicts scores 0 (it is one the reference model sees)."""
    tp, a, b = counts.unbind(-2)
    iou = tp / (a + b - tp).clamp_min(1)
    return (iou * classes).sum(-1) / classes.sum().clamp_min(1)


def _snd(grid_probs: Tensor) -> Tensor:
    """``[N]`` soft neighbourhood density of each frame's grid of softmax vectors."""
    n, k = grid_probs.shape[:2]
    f = nnf.normalize(grid_probs.flatten(2).transpose(1, 2).double(), dim=-1)  # [N,P,K]
    sim = f @ f.transpose(1, 2) / SND_TEMPERATURE
    eye = torch.eye(sim.shape[-1], dtype=torch.bool)
    q = sim.masked_fill(eye, float("-inf")).softmax(-1)
    return -(q * q.clamp_min(1e-12).log()).sum(-1).mean(-1)


@dataclass
class Statistic:
    """One validator on one model: per-frame statistics ``[N,D]`` and the score of their sum."""

    per_frame: Tensor
    reduce: Callable[[Tensor], Tensor]  # [..., D] -> [...]

    def score(self) -> float:
        return float(self.reduce(self.per_frame.sum(0)))


def statistics(
    name: str,
    out: Outputs,
    source: Outputs,
    *,
    pool: Tensor | None = None,
    min_share: float = 0.002,
) -> Statistic:
    """Validator ``name`` of ``out`` (``source``: the source model's outputs on the same frames, whose
    classes the IoU-based validators average over; ``pool``: ``[N,H,W]`` the ensemble's labels)."""
    k = out.num_classes
    src_hist = source.histogram().sum(0)
    classes = (src_hist / src_hist.sum().clamp_min(1)) >= min_share
    s = out.stats
    if name == "confidence":
        return Statistic(torch.stack([s["conf"], s["pixels"]], 1), lambda t: t[..., 0] / t[..., 1])
    if name == "neg_entropy":
        return Statistic(torch.stack([s["ent"], s["pixels"]], 1), lambda t: -t[..., 0] / t[..., 1])
    if name == "im":
        logk = math.log(max(k, 2))

        def im(t: Tensor) -> Tensor:
            mean_p = t[..., :k] / t[..., -1:]
            h_mean = -(mean_p * mean_p.clamp_min(1e-12).log()).sum(-1) / logk
            return h_mean - t[..., k] / t[..., -1]

        return Statistic(torch.cat([s["probs"], s["ent"][:, None], s["pixels"][:, None]], 1), im)
    if name == "im_consistency":  # both, each on its own [0, 1]-like scale: their sum
        a, b = statistics("im", out, source), statistics("consistency", out, source)
        d = a.per_frame.shape[1]
        return Statistic(
            torch.cat([a.per_frame, b.per_frame], 1), lambda t: a.reduce(t[..., :d]) + b.reduce(t[..., d:])
        )
    if name == "snd":
        ones = torch.ones(out.pred.shape[0], dtype=torch.float64)
        return Statistic(torch.stack([_snd(out.grid_probs), ones], 1), lambda t: t[..., 0] / t[..., 1])
    if name in ("consistency", "source_agreement", "ensemble"):
        if name == "consistency":
            if not out.views:
                raise ValueError("consistency needs the transformed copies (model_outputs(views=True))")
            counts = torch.stack([_overlap(out.pred, v, k) for v in out.views]).mean(0)
        else:
            if name == "source_agreement":
                counts = _overlap(out.pred, source.pred, k)
            elif pool is None:
                raise ValueError("the ensemble validator needs the pool's labels (pool_labels)")
            else:  # on the pixel grid the pool keeps
                counts = _overlap(out.grid_probs.argmax(1), pool, k)
        return Statistic(counts.flatten(1), lambda t: _miou_over(t.unflatten(-1, (3, k)), classes))
    raise ValueError(f"unknown validator {name!r}; one of {', '.join(VALIDATORS)}")


def pool_labels(outputs: Sequence[Outputs]) -> Tensor:
    """``[N,h,w]`` the argmax of the mean softmax of ``outputs`` on the pixel grid they keep."""
    return torch.stack([o.grid_probs for o in outputs]).mean(0).argmax(1)


def compare(a: Statistic, b: Statistic, resamples: int = 500, seed: int = 0) -> tuple[float, float, float]:
    """score(a) - score(b) and its 95 % percentile-bootstrap interval, the same frames resampled for both."""
    n = a.per_frame.shape[0]
    counts = _resample_counts(n, resamples, seed)  # [R,N]
    diffs = a.reduce(counts @ a.per_frame) - b.reduce(counts @ b.per_frame)
    lo, hi = torch.quantile(diffs.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return a.score() - b.score(), float(lo), float(hi)
