"""``soft_teacher``: a mean teacher whose targets are the teacher's whole softmax (CoTTA's core).

CoTTA (Wang et al., CVPR 2022) without its augmentation ensemble: the student learns, on the same
frames (colour-jittered for the student: otherwise a student equal to its teacher has no gradient), the
EMA teacher's class probabilities (soft cross-entropy, every pixel, no threshold and no argmax), and on
a stream a share of the trained weights returns to the source's at every step (the
stream's ``restore_prob``: stochastic restore). A strong, cheap baseline for continual adaptation:
tuned, it is within about half a point of recent methods on published continual benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.base import Logs, phase
from stvm_sdk.methods.mean_teacher import EmaTeacher
from stvm_sdk.methods.parts.augment import strong_augment
from stvm_sdk.methods.parts.options import AugConfig
from stvm_sdk.methods.parts.pseudo import label_counts
from stvm_sdk.methods.registry import register_method
from stvm_sdk.models.contract import forward_logits, normalize


@dataclass(frozen=True)
class SoftTeacherOptions:
    """``[methods.soft_teacher]``."""

    student_bn: str = "frozen"  # as the mean teacher's: frozen statistics, affine parameters learn
    deliverable: str = "teacher"
    ema_max: float = 0.999  # CoTTA's teacher momentum
    # The student sees the frame with the mean teacher's colour jitter and blur. False (the frame as it
    # is) learns nothing: a student equal to its teacher on the same input has zero soft-CE gradient
    # (CoTTA's teacher differs by its augmentation ensemble, which this baseline leaves out).
    augment: bool = True
    aug: AugConfig = field(default_factory=AugConfig)

    def __post_init__(self) -> None:
        if self.student_bn not in ("train", "frozen"):
            raise ConfigError(f"student_bn must be train|frozen, got {self.student_bn!r}")
        if self.deliverable not in ("teacher", "student"):
            raise ConfigError(f"deliverable must be teacher|student, got {self.deliverable!r}")
        if not 0 <= self.ema_max < 1:
            raise ConfigError(f"ema_max must be in [0, 1), got {self.ema_max}")


@register_method
class SoftTeacher(EmaTeacher):
    """Student S learns the EMA teacher T's softmax on the same frames: -sum_c p_T(c) log p_S(c)."""

    name = "soft_teacher"
    summary = "mean teacher with soft targets (CoTTA without its augmentation ensemble)"
    updates = "all student weights; the teacher follows by EMA"
    order = 25
    Options = SoftTeacherOptions

    def loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, Logs]:
        assert self.teacher is not None
        with torch.no_grad(), phase("teacher"):
            t_prob = forward_logits(self.teacher, normalize(images, self.mean, self.std)).float().softmax(1)
        pseudo = t_prob.argmax(1)
        x = strong_augment(images, self.options.aug, g) if self.options.augment else images
        with phase("student"):
            s_logits = forward_logits(self.net("student"), normalize(x, self.mean, self.std)).float()
        with phase("student_loss"):
            loss = -(t_prob * s_logits.log_softmax(1)).sum(1).mean()
        return loss, {"loss_st": loss.detach(), "pseudo_hist": label_counts(pseudo)[: self.num_classes]}
