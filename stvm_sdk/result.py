"""What an adaptation run produced (:class:`AdaptResult`), and a finished run read back (:func:`load_run`)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import DataError
from stvm_sdk.methods.registry import get_method, migrate
from stvm_sdk.models.io import SegModel, load_model
from stvm_sdk.rundir import RunDir


@dataclass
class AdaptResult:
    """What an adaptation run produced."""

    model: SegModel  # the deliverable (decision 10)
    teacher: SegModel | None
    student: SegModel
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    # Networks the method trains beside teacher and student, by name (:meth:`Method.extras`).
    extras: dict[str, nn.Module] = field(default_factory=dict)
    config: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def model_path(self) -> Path:
        return RunDir(self.run_dir).model_path("model")

    @property
    def gate(self) -> str | None:
        """The deploy gate's verdict without labels: ``pass``, ``worse_than_source`` or ``collapsed``
        (``metrics["label_free"]`` says why); None for a run that was not judged."""
        return (self.metrics.get("label_free") or {}).get("gate")

    @property
    def metric(self) -> nn.Module | None:
        """Deprecated: ``extras.get("metric")`` (kept for one version)."""
        warnings.warn(
            "AdaptResult.metric is deprecated: use result.extras.get('metric')", DeprecationWarning, 2
        )
        return self.extras.get("metric")

    @property
    def has_pixel_weights(self) -> bool:
        """Whether :meth:`pixel_weights` has something to show for this run."""
        return self.teacher is not None and get_method(self.config.method).has_pixel_weights(self.extras)

    def pixel_weights(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deliverable teacher's pseudo-labels ``[B,H,W]`` and the method's weight of each ``[B,H,W]``
        (in [0,1]) for images in [0,1], as the method weighs them (:meth:`Method.pixel_weights`).

        Raises:
            ValueError: the method has no per-pixel weight to show (e.g. it has no teacher).
        """
        method = get_method(self.config.method)
        return method.pixel_weights(self.teacher, self.extras, self.config, images)


def reliability_map(result: AdaptResult, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pseudo-labels ``[B,H,W]`` and their weight ``[B,H,W]`` in [0,1] for images in [0,1]: for
    STvM runs the metric network's reliability (:meth:`AdaptResult.pixel_weights`)."""
    return result.pixel_weights(images)


def load_run(run_dir: str | os.PathLike[str], *, trust_pickle: bool = False) -> AdaptResult:
    """Reopen a finished run directory as an :class:`AdaptResult` (models, metrics, the method's extras).

    Args:
        trust_pickle: allow unpickling models saved as pickles (a user's own ``nn.Module`` class):
            loading a pickle runs code from the file, so only for run folders you made or trust.
    """
    run = RunDir(Path(run_dir))
    if not run.summary_path.is_file():
        raise DataError(f"{run.path} is not a finished run (no summary.json): finish it with --resume first")
    try:
        cfg = migrate(json.loads(run.config_path.read_text()))
        metrics = json.loads(run.summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{run.path} is not a readable run folder: {exc}") from None
    student = load_model(run.model_path("student"), trust_pickle=trust_pickle)
    teacher_path = run.model_path("teacher")
    teacher = load_model(teacher_path, trust_pickle=trust_pickle) if teacher_path.is_file() else None
    model = teacher if (teacher is not None and metrics.get("deliverable") == "teacher") else student
    checkpoint = run.load_checkpoint()
    state = (checkpoint or {}).get("state", {}).get("method", {})
    extras = get_method(cfg.method).load_extras(teacher or student, cfg, state)
    return AdaptResult(model, teacher, student, run.path, metrics, extras, cfg)
