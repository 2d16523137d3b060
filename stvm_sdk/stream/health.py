"""Label-free health of a model adapting on a stream, and the rule that calls a collapse.

Self-training on a stream fails in one typical way: the pseudo-labels feed on themselves until the
network predicts a few classes everywhere (error accumulation, then collapse). Nothing labelled
arrives to notice it, so the signals are the network's own, gathered over a *window* of frames:

- ``hist_js``: Jensen-Shannon divergence (base 2, in [0,1]) between the class histogram of the
  deliverable's predictions and the frozen source model's on the same frames. The source model is
  wrong on a shifted domain, but it does not collapse: a large divergence means the adapted network
  has drifted to a different picture of the scene.
- ``class_ratio``: classes the deliverable predicts on at least ``min_share`` of the pixels, over the
  same count for the source model. A collapse shows as classes disappearing.
- ``confidence``: the deliverable's mean max-softmax (a collapsing network becomes certain
  everywhere, even on class boundaries: above ``max_confidence`` the window is unhealthy);
  ``reliability``: the method's mean pixel weight; ``agreement``: teacher-student argmax agreement.
- ``finite``: every loss and logit of the window was finite.

:class:`HealthRule` turns a window's signals into healthy / unhealthy with the reasons, and after
``patience`` unhealthy windows in a row it asks for a restore. Pure torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from stvm_sdk.stream.settings import HealthRule


def js_divergence(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon divergence in bits between two histograms (normalised here), in [0, 1]."""
    p = p.double() / p.sum().clamp_min(1e-12)
    q = q.double() / q.sum().clamp_min(1e-12)
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        nz = a > 0
        return (a[nz] * (a[nz] / m[nz]).log2()).sum()

    return float((0.5 * kl(p) + 0.5 * kl(q)).clamp(0.0, 1.0))


@dataclass
class Window:
    """Running sums of one window's signals (tensors on CPU)."""

    num_classes: int
    frames: int = 0
    adapted: int = 0
    pred_hist: Tensor = field(init=False)
    source_hist: Tensor = field(init=False)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    finite: bool = True

    def __post_init__(self) -> None:
        self.pred_hist = torch.zeros(self.num_classes, dtype=torch.float64)
        self.source_hist = torch.zeros(self.num_classes, dtype=torch.float64)

    def add(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            self.finite = False
            return
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> float | None:
        n = self.counts.get(name, 0)
        return self.sums[name] / n if n else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "adapted": self.adapted, "pred_hist": self.pred_hist.clone(),
            "source_hist": self.source_hist.clone(), "sums": dict(self.sums), "counts": dict(self.counts),
            "finite": self.finite,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frames, self.adapted, self.finite = (
            int(state["frames"]),
            int(state["adapted"]),
            bool(state["finite"]),
        )
        self.pred_hist.copy_(state["pred_hist"])
        self.source_hist.copy_(state["source_hist"])
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class HealthMonitor:
    """Gathers a window's signals and applies :class:`HealthRule` when the window closes."""

    def __init__(self, num_classes: int, rule: HealthRule) -> None:
        self.num_classes, self.rule = num_classes, rule
        self.window = Window(num_classes)
        self.unhealthy_run = 0  # unhealthy windows in a row

    def observe(
        self,
        pred: Tensor,
        source_pred: Tensor | None,
        confidence: float,
        logs: dict[str, float] | None = None,
    ) -> None:
        """One frame: the deliverable's labels ``[H,W]`` (and the source model's when it was adapted on)."""
        w = self.window
        w.frames += 1
        w.add("confidence", confidence)
        if source_pred is not None:  # an adapted frame: both histograms on the same pixels
            w.adapted += 1
            w.pred_hist += torch.bincount(pred.flatten().cpu(), minlength=self.num_classes)[
                : self.num_classes
            ]
            w.source_hist += torch.bincount(source_pred.flatten().cpu(), minlength=self.num_classes)[
                : self.num_classes
            ]
        for name, value in (logs or {}).items():
            w.add(name, value)

    def close(self) -> dict[str, Any]:
        """The window's record (signals, ``healthy``, ``reasons``, ``restore``) and a fresh window."""
        w, rule = self.window, self.rule
        record: dict[str, Any] = {"frames": w.frames, "adapted_frames": w.adapted}
        for name in ("confidence", "reliability", "agreement", "loss"):
            value = w.mean(name)
            if value is not None:
                record[name] = round(value, 5)
        reasons = []
        if not w.finite:
            reasons.append("non-finite loss or logits")
        confidence = w.mean("confidence")
        if confidence is not None and confidence > rule.max_confidence:
            reasons.append(f"certain everywhere (mean confidence {confidence:.3f} > {rule.max_confidence})")
        if w.adapted:
            js = js_divergence(w.pred_hist, w.source_hist)
            total_p, total_s = w.pred_hist.sum().clamp_min(1), w.source_hist.sum().clamp_min(1)
            n_pred = int((w.pred_hist / total_p >= rule.min_share).sum())
            n_src = int((w.source_hist / total_s >= rule.min_share).sum())
            ratio = n_pred / max(n_src, 1)
            record.update(
                hist_js=round(js, 5), classes=n_pred, source_classes=n_src, class_ratio=round(ratio, 4)
            )
            if js > rule.js_max:
                reasons.append(
                    f"class histogram diverged from the source model's (JS {js:.2f} > {rule.js_max})"
                )
            if ratio < rule.min_class_ratio:
                reasons.append(f"predicts {n_pred} classes where the source model predicts {n_src}")
        healthy = not reasons
        self.unhealthy_run = 0 if healthy else self.unhealthy_run + 1
        restore = self.unhealthy_run >= rule.patience or not w.finite
        if restore:
            self.unhealthy_run = 0
        record.update(healthy=healthy, reasons=reasons, restore=restore)
        self.window = Window(self.num_classes)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict(), "unhealthy_run": self.unhealthy_run}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state["window"])
        self.unhealthy_run = int(state["unhealthy_run"])
