"""Check an exported graph against the eager PyTorch model it came from, on real frames.

Figures (all on the same frames, at the same input size):

* ``max_abs_diff``: largest |logit_onnx - logit_eager| (None for a baked-argmax graph);
* ``argmax_agreement``: % of pixels whose class is the same in both;
* ``miou_eager`` / ``miou_onnx`` / ``miou_delta`` (onnx - eager, in points) when labels exist.

Labels are resized (nearest) to the inference size, so a baked-argmax graph is scored like the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvm_sdk.data.images import resize_label
from stvm_sdk.errors import DataError, VerificationError
from stvm_sdk.eval.metrics import confusion_matrix, mean_iou
from stvm_sdk.export.frames import VerifyFrame, onnx_inputs
from stvm_sdk.export.precisions import PRECISIONS, Thresholds, base
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel


@dataclass
class Verification:
    """How an ONNX graph compares with eager PyTorch; ``passed`` applies its precision's thresholds."""

    precision: str
    n_frames: int
    input_size: tuple[int, int]
    argmax_agreement: float
    max_abs_diff: float | None = None
    max_abs_logit: float | None = None
    miou_eager: float | None = None
    miou_onnx: float | None = None
    miou_delta: float | None = None
    source: str = ""
    non_finite: bool = False  # NaN/inf in the eager model's or the graph's outputs
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON holds them: a figure that is not a number (no labelled pixel) is null."""
        d = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }
        d["input_size"] = list(self.input_size)
        return d


def verify_onnx(
    path: str | Path,
    model: SegModel,
    frames: Sequence[VerifyFrame],
    *,
    precision: str,
    baked_normalize: bool = True,
    source: str = "",
    session: Any = None,
) -> Verification:
    """Run the graph in ONNX Runtime (CPU) and the eager model on ``frames``; compare and judge.

    Raises:
        DataError: no frames. (A failed comparison is reported in the result: see :func:`require_pass`.)
    """
    if not frames:
        raise DataError("no frames to verify the export on")
    from stvm_sdk.runners.ort import ort_session

    sess = session or ort_session(Path(path))
    acc = _Accumulator(model.num_classes)
    for f, x in zip(frames, onnx_inputs(frames, model, baked_normalize=baked_normalize), strict=True):
        with torch.no_grad():
            eager = forward_logits(model.module.eval(), normalize(f.image[None], model.mean, model.std))
        acc.add(
            eager, torch.from_numpy(np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])), f.label
        )
    h, w = frames[0].image.shape[-2:]
    v = Verification(precision, len(frames), (int(h), int(w)), 100.0 * acc.agree / acc.total,
                     acc.max_diff if acc.logits else None, acc.max_logit, source=source,
                     non_finite=acc.non_finite)  # fmt: skip
    if acc.labelled:
        v.miou_eager, v.miou_onnx = 100.0 * mean_iou(acc.conf_e), 100.0 * mean_iou(acc.conf_o)
        v.miou_delta = v.miou_onnx - v.miou_eager
    return judge(v)


class _Accumulator:
    """Running comparison figures over frames (eager logits vs graph logits or class ids)."""

    def __init__(self, k: int) -> None:
        self.k, self.agree, self.total, self.labelled = k, 0, 0, 0
        self.max_diff, self.max_logit, self.logits, self.non_finite = 0.0, 0.0, True, False
        self.conf_e = torch.zeros(k, k, dtype=torch.int64)
        self.conf_o = torch.zeros(k, k, dtype=torch.int64)

    def add(self, eager: torch.Tensor, out: torch.Tensor, label: torch.Tensor | None) -> None:
        pred_e = eager.argmax(1)
        self.logits = out.dim() == 4
        if not bool(torch.isfinite(eager).all()) or (self.logits and not bool(torch.isfinite(out).all())):
            self.non_finite = True  # NaN compares false to everything: judged explicitly, never "0 diff"
        if self.logits:
            diff = float((out.float() - eager).abs().max())
            self.max_diff = (
                diff if math.isnan(diff) or math.isnan(self.max_diff) else max(self.max_diff, diff)
            )
        pred_o = out.argmax(1) if self.logits else out.long()
        self.max_logit = max(self.max_logit, float(eager.abs().max()))
        self.agree += int((pred_e == pred_o).sum())
        self.total += pred_e.numel()
        if label is not None:
            lab = resize_label(label, (int(pred_e.shape[-2]), int(pred_e.shape[-1])))
            self.conf_e += confusion_matrix(pred_e[0], lab, self.k)
            self.conf_o += confusion_matrix(pred_o[0], lab, self.k)
            self.labelled += 1


def judge(v: Verification, thresholds: Thresholds | None = None) -> Verification:
    """Set ``v.passed``/``v.failures`` from ``thresholds``, by default those of its precision's row
    (the base row's for a precision the table does not have)."""
    t = thresholds or PRECISIONS.get(v.precision, base()).thresholds
    fails = ["NaN or inf in the outputs"] if v.non_finite else []
    if v.argmax_agreement < t.argmax_agreement:
        fails.append(f"argmax agreement {v.argmax_agreement:.3f}% < {t.argmax_agreement}%")
    if t.rel_max_abs_diff is not None and v.max_abs_diff is not None:
        limit = t.rel_max_abs_diff * max(1.0, v.max_abs_logit or 0.0)
        if not v.max_abs_diff <= limit:
            fails.append(f"max |logit diff| {v.max_abs_diff:.3g} > {limit:.3g}")
    if t.miou_drop is not None and v.miou_delta is not None and v.miou_delta < -t.miou_drop:
        fails.append(
            f"mIoU {v.miou_onnx:.2f} is {-v.miou_delta:.2f} points below eager ({v.miou_eager:.2f}), "
            f"more than {t.miou_drop}"
        )
    v.failures, v.passed = fails, not fails
    return v


def require_pass(v: Verification, path: Path) -> None:
    """Raise :class:`VerificationError` with the numbers when ``v`` failed."""
    if not v.passed:
        raise VerificationError(
            f"{path.name} ({v.precision}) does not match the PyTorch model on "
            f"{v.n_frames} frames: {'; '.join(v.failures)}"
        )


def table_rows(results: Sequence[Verification]) -> list[list[str]]:
    """Rows for the printed verification table (one per precision)."""

    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    return [
        [
            v.precision,
            str(v.n_frames),
            f"{v.input_size[0]}x{v.input_size[1]}",
            fmt(v.max_abs_diff, ".2e"),
            f"{v.argmax_agreement:.3f}",
            fmt(v.miou_eager, ".2f"),
            fmt(v.miou_onnx, ".2f"),
            fmt(v.miou_delta, "+.2f"),
            "ok" if v.passed else "FAIL",
        ]
        for v in results
    ]


TABLE_HEADER = [
    "precision",
    "frames",
    "size",
    "max|Δlogit|",
    "argmax agree %",
    "mIoU eager",
    "mIoU onnx",
    "ΔmIoU",
    "check",
]
