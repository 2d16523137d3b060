"""``threshold_st``: the mean teacher on its top-p% most confident pixels only (the paper's Figure 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.base import Logs
from stvm_sdk.methods.mean_teacher import IGNORE, MeanTeacher, MeanTeacherOptions
from stvm_sdk.methods.registry import register_method


@dataclass(frozen=True)
class ThresholdOptions(MeanTeacherOptions):
    """``threshold_st``'s knobs (``[methods.threshold_st]``): the mean teacher's, and the share kept."""

    keep: float = 0.6  # share of the batch's most confident pixels kept as pseudo-labels

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.keep <= 1:
            raise ConfigError(f"methods.threshold_st.keep must be in (0, 1], got {self.keep}")


@register_method
class ThresholdST(MeanTeacher):
    """Pseudo-labels below the batch's (1 - keep) confidence quantile are ignored; the rest weigh 1."""

    name = "threshold_st"
    summary = "mean teacher on the top-p% most confident pseudo-labels"
    order = 30
    Options = ThresholdOptions

    def weigh(
        self, t_logits: Tensor, conf: Tensor, pseudo: Tensor, g_batch: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        # The quantile of a strided sample: torch.quantile refuses inputs over 2^24 elements.
        sample = conf.flatten().float()[:: max(1, conf.numel() // 65536)]
        thr = torch.quantile(sample, 1 - self.options.keep)
        labels = torch.where(conf >= thr, pseudo, torch.full_like(pseudo, IGNORE))
        return t_logits.new_zeros(()), torch.ones_like(conf), labels
