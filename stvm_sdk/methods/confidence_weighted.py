"""``confidence_weighted``: the mean teacher with each pixel weighted by the teacher's max-softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stvm_sdk.methods.base import Logs
from stvm_sdk.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from stvm_sdk.methods.registry import register_method


@dataclass(frozen=True)
class ConfidenceWeightedOptions(MeanTeacherOptions):
    """The mean teacher's knobs; weights rescaled inside each pseudo-class like STvM's (decision 6)."""

    weight_scale: str = "class_mean"


@register_method
class ConfidenceWeighted(MeanTeacher):
    """All pseudo-labels, weight = the teacher's confidence: STvM with confidence for reliability."""

    name = "confidence_weighted"
    summary = "mean teacher, each pixel weighted by the teacher's confidence"
    order = 50
    Options = ConfidenceWeightedOptions

    def weigh(
        self, t_logits: Tensor, conf: Tensor, pseudo: Tensor, g_batch: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        return t_logits.new_zeros(()), conf, pseudo
