"""A run's label-free judgement: its held-out frames, the signals of each snapshot, the one to deliver,
and the deploy gate.

Frames held out from training (``run.holdout``, spread evenly over the folder) are never in a batch nor
in decision 0's statistics. The source model's outputs on them are taken once; at every candidate step
(``run.snapshots`` and the evenly spaced ``run.candidates``, the start and the end) the deliverable's
outputs are taken and its signals logged: every validator of :mod:`stvm_sdk.eval.label_free`, the
stream's health figures against the source model (``hist_js``, ``class_ratio``, ``confidence``) and the
teacher-student agreement. At the end:

- **choice** (``run.deliver``): ``best`` delivers the candidate ``run.validator`` ranks first among
  those that pass the collapse rule (among all when none does), ``last`` the run's last network;
- **gate**: ``collapsed`` when the delivered model fails the stream's health rule on the held-out frames
  (histogram divergence, classes lost, certain everywhere, non-finite), ``worse_than_source`` when its
  ``run.gate_validator`` score is below the source model's with the 95 % paired-bootstrap interval over
  the held-out frames entirely below ``-gate_margin``, else ``pass`` (docs/method.md, decision 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from stvm_sdk.data.frames import Frame, FrameFolder
from stvm_sdk.data.images import resize_image
from stvm_sdk.eval.label_free import VALIDATORS, Outputs, compare, model_outputs, pool_labels, statistics
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel
from stvm_sdk.stream.health import js_divergence
from stvm_sdk.stream.settings import HealthRule

HOLDOUT_MAX = 32  # held-out frames at most: the judgement's cost is a few forward passes per candidate
PIXELS_MAX = 512 * 1024  # frames are scored at most this large (downscaled, aspect kept)
GATES = ("pass", "worse_than_source", "collapsed")  # the gate's verdicts


def split_holdout(frames: list[Frame], share: float) -> tuple[list[Frame], list[Frame]]:
    """``(training, held_out)``: ``share`` of the frames (at most :data:`HOLDOUT_MAX`), evenly spaced
    over the folder's order (a video's frames are held out across its length, not one scene)."""
    n_out = min(HOLDOUT_MAX, int(len(frames) * share))
    if n_out < 1:
        return list(frames), []
    picks = {int(i * len(frames) / n_out + len(frames) / (2 * n_out)) for i in range(n_out)}
    return [f for i, f in enumerate(frames) if i not in picks], [
        f for i, f in enumerate(frames) if i in picks
    ]


def scoring_size(frames: list[Frame], size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size the held-out frames are scored at: ``size``, else the most common frame size, at most
    :data:`PIXELS_MAX` pixels (the aspect kept)."""
    if size is None:
        sizes = [f.size for f in frames if f.size is not None]
        size = max(set(sizes), key=sizes.count) if sizes else None
    if size is None:
        return None
    h, w = size
    scale = min(1.0, math.sqrt(PIXELS_MAX / (h * w)))
    return (max(1, int(h * scale)), max(1, int(w * scale)))


def load_held_out(folder: FrameFolder, frames: list[Frame], size: tuple[int, int] | None) -> Tensor | None:
    """``[N,3,H,W]`` the held-out frames in [0,1] at one size (an unreadable one is skipped and recorded)."""
    imgs = [x[0] for f in frames if (x := folder.load(f, size)) is not None]
    if not imgs:
        return None
    hw = size or (int(imgs[0].shape[-2]), int(imgs[0].shape[-1]))
    return torch.stack([resize_image(x, hw) for x in imgs])


@dataclass
class Judge:
    """Label-free signals of a run's candidates on its held-out frames, the choice and the gate."""

    images: Tensor  # [N,3,H,W] in [0,1], on CPU
    validator: str  # ranks the candidates
    rule: HealthRule
    device: torch.device
    batch_size: int = 8
    gate_validator: str = ""  # compares the delivered model with the source model; "": ``validator``
    source_out: Outputs | None = None
    outputs: dict[int, Outputs] = field(default_factory=dict)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate_validator = self.gate_validator or self.validator
        for name in (self.validator, self.gate_validator):
            if name not in VALIDATORS:
                raise ValueError(f"unknown validator {name!r}")

    def outputs_of(self, model: SegModel, views: bool = True) -> Outputs:
        net = model.module
        was = net.training
        net.eval()
        device = next(iter(net.parameters()), torch.empty(0, device=self.device)).device  # where it is

        def forward(x: Tensor) -> Tensor:
            return forward_logits(net, normalize(x.to(device), model.mean, model.std)).cpu()

        try:
            return model_outputs(forward, self.images, batch_size=self.batch_size, views=views)
        finally:
            net.train(was)

    def start(self, source: SegModel) -> None:
        """The source model's outputs, once: every candidate is compared with it."""
        self.source_out = self.outputs_of(source)

    def observe(self, step: int, model: SegModel, student: SegModel | None = None) -> dict[str, Any]:
        """Score the deliverable after ``step`` steps (and its agreement with ``student``, if another
        network); returns the record logged to ``metrics.jsonl`` under ``label_free``."""
        assert self.source_out is not None, "start() first"
        out = self.outputs_of(model)
        self.outputs[step] = out
        record: dict[str, Any] = {
            name: round(statistics(name, out, self.source_out).score(), 5)
            for name in VALIDATORS
            if name != "ensemble"  # needs every candidate: scored by summary()
        }
        record.update(self.health(out))
        if student is not None and student.module is not model.module:
            sp = self.outputs_of(student, views=False).pred
            record["agreement"] = round(float((sp == out.pred).double().mean()), 5)
        self.records[step] = record
        return record

    def health(self, out: Outputs) -> dict[str, Any]:
        """The stream's health figures of ``out`` against the source model's, and the rule's reasons."""
        assert self.source_out is not None
        rule = self.rule
        hp, hs = out.histogram().sum(0), self.source_out.histogram().sum(0)
        n_pred = int((hp / hp.sum().clamp_min(1) >= rule.min_share).sum())
        n_src = int((hs / hs.sum().clamp_min(1) >= rule.min_share).sum())
        ratio = n_pred / max(n_src, 1)
        js = js_divergence(hp, hs)
        confidence = float(out.stats["conf"].sum() / out.stats["pixels"].sum())
        reasons = []
        if not out.finite:
            reasons.append("non-finite logits")
        if confidence > rule.max_confidence:
            reasons.append(f"certain everywhere (mean confidence {confidence:.3f} > {rule.max_confidence})")
        if js > rule.js_max:
            reasons.append(f"class histogram diverged from the source model's (JS {js:.2f} > {rule.js_max})")
        if ratio < rule.min_class_ratio:
            reasons.append(f"predicts {n_pred} classes where the source model predicts {n_src}")
        return {
            "hist_js": round(js, 5), "classes": n_pred, "source_classes": n_src,
            "class_ratio": round(ratio, 4), "confidence": round(confidence, 5), "collapse": reasons,
        }  # fmt: skip

    def healthy(self) -> list[int]:
        """The candidate steps that pass the collapse rule."""
        return [s for s, out in self.outputs.items() if not self.health(out)["collapse"]]

    def _pool(self, validator: str | None = None) -> Tensor | None:
        """The ensemble's labels: the source model and the candidates that did not collapse (only for
        that validator; collapsed candidates would outvote the rest once a run has collapsed)."""
        if (validator or self.validator) != "ensemble":
            return None
        assert self.source_out is not None
        return pool_labels([self.source_out, *(self.outputs[s] for s in self.healthy())])

    def scores(self) -> dict[int, float]:
        """The chosen validator's score of every candidate."""
        assert self.source_out is not None
        pool = self._pool()
        return {
            s: statistics(self.validator, o, self.source_out, pool=pool).score()
            for s, o in self.outputs.items()
        }

    def choose(self, deliver: str) -> tuple[int, str]:
        """The step to deliver and why: the validator's first among the candidates that did not
        collapse (among all of them when every one did), or the last with ``deliver = "last"``."""
        last = max(self.outputs)
        if deliver == "last":
            return last, "run.deliver = last"
        scores = self.scores()
        healthy = self.healthy() or list(scores)
        best = max(sorted(healthy, reverse=True), key=lambda s: scores[s])  # a tie: the later step
        dropped = len(scores) - len(healthy)
        skipped = f"; {dropped} collapsed candidate(s) left out" if dropped else ""
        if best == last:
            return best, f"the last step is ranked first by {self.validator}{skipped}"
        return best, (
            f"ranked first by {self.validator} of {len(scores)} candidates ({scores[best]:.4f} vs "
            f"{scores[last]:.4f} at the last step {last}){skipped}"
        )

    def gate(self, step: int, margin: float) -> dict[str, Any]:
        """The deploy gate on the candidate of ``step`` against the source model."""
        assert self.source_out is not None
        out = self.outputs[step]
        collapse = self.health(out)["collapse"]
        name = self.gate_validator
        pool = self._pool(name)
        mine = statistics(name, out, self.source_out, pool=pool)
        theirs = statistics(name, self.source_out, self.source_out, pool=pool)
        diff, lo, hi = compare(mine, theirs)
        verdict = {
            "gate_validator": name, "source_score": round(theirs.score(), 5),
            "delivered_score": round(mine.score(), 5), "difference": round(diff, 5),
            "interval": [round(lo, 5), round(hi, 5)],
        }  # fmt: skip
        if collapse:
            return {"gate": "collapsed", "reasons": collapse, **verdict}
        if hi < -margin:
            why = (
                f"{name} {mine.score():.4f} vs the source model's {theirs.score():.4f} "
                f"(difference {diff:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}])"
            )
            return {"gate": "worse_than_source", "reasons": [why], **verdict}
        return {"gate": "pass", "reasons": [], **verdict}


def candidate_steps(iters: int, candidates: int, snapshots: tuple[int, ...]) -> list[int]:
    """Steps scored without labels: the start, ``candidates`` - 1 evenly spaced steps, every snapshot
    step, and the end."""
    even = {round(iters * i / candidates) for i in range(1, candidates)} if candidates > 1 else set()
    return sorted({0, iters, *even, *(s for s in snapshots if s < iters)})


def gate_line(section: dict[str, Any]) -> str:
    """One line for a failed gate: what it found and what to do."""
    what = "collapsed" if section["gate"] == "collapsed" else "worse than the source model"
    return (
        f"the delivered model looks {what} on {section['frames']} unlabelled frames: "
        f"{'; '.join(section['reasons'])}. Check it with labels (--labels) before shipping it, or "
        "deploy the source model"
    )
