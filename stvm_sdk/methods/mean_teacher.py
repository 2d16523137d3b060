"""``mean_teacher``: self-training on all of an EMA teacher's pseudo-labels, each pixel weighted 1.

The base of the ablation ladder: ``threshold_st``, ``confidence_weighted``, ``stvm_no_mocm`` and
``stvm`` differ from it only in :meth:`MeanTeacher.weigh` (which pixels count, and how much) and
:meth:`MeanTeacher.mix` (STvM's MOCM):

| method              | pseudo-labels          | weight              | MOCM |
|---------------------|------------------------|---------------------|------|
| threshold_st        | top-p% confident only  | 1                   | no   |
| mean_teacher        | all                    | 1                   | no   |
| confidence_weighted | all                    | teacher max-softmax | no   |
| stvm_no_mocm        | all                    | metric reliability  | no   |
| stvm                | all                    | metric reliability  | yes  |
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stvm_sdk.errors import ConfigError
from stvm_sdk.kernels import weighted_cross_entropy
from stvm_sdk.methods.base import Logs, Method, phase
from stvm_sdk.methods.parts.augment import strong_augment
from stvm_sdk.methods.parts.ema import ema_beta, ema_update
from stvm_sdk.methods.parts.norm import batchnorms
from stvm_sdk.methods.parts.options import AugConfig
from stvm_sdk.methods.parts.pseudo import CLASS_POWER, class_balance, label_counts
from stvm_sdk.methods.registry import register_method
from stvm_sdk.models.contract import forward_logits, normalize

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.models.io import SegModel

IGNORE = 255
NORMALIZE = ("valid", "weights", "class", "class_sqrt")
WEIGHT_SCALES = ("raw", "unit_mean", "class_mean")


@dataclass(frozen=True)
class MeanTeacherOptions:
    """The mean teacher's knobs (section ``[methods.<name>]`` of every mean-teacher method)."""

    # Decision 6's denominator: "valid" (the paper's rule) divides the weighted CE by the valid pixels,
    # "weights" by the sum of weights; "class" averages each pseudo-class's mean weighted CE over the
    # classes in the batch (class weight n_k^-1); "class_sqrt" weighs each class by n_k^-1/2, half way:
    # the best mean over the benchmark's tuning blocks for STvM and for mean_teacher (docs/method.md,
    # decision 6).
    normalize: str = "class_sqrt"
    # "frozen" keeps the BN statistics the student started with (decision 0's target statistics;
    # affine parameters still learn); "train" (the paper's setting) normalises by batch statistics and
    # updates the running ones, which the teacher then averages. "frozen" on the tuning split: with
    # batches of 4 strongly augmented, mixed frames the running statistics drift away from clean frames.
    student_bn: str = "frozen"
    deliverable: str = "teacher"  # decision 10: which network is the output model (teacher | student)
    ema_max: float = 0.999  # cap of the teacher's EMA factor beta_t = min(1 - 1/(t+1), ema_max)
    # How the pixel weights enter the loss: "raw" as weigh() gives them (weights below 1 shrink the
    # step), or "unit_mean": rescaled to mean 1 over the batch's valid pixels, so weighting moves the
    # gradient between pixels without shrinking it (every method then steps alike at one lr);
    # "class_mean": rescaled to mean 1 inside each pseudo-class of the batch, so weighting ranks pixels
    # within a class but never moves loss between classes (hard classes keep their share).
    weight_scale: str = "raw"
    aug: AugConfig = field(default_factory=AugConfig)  # the student's strong augmentation

    def __post_init__(self) -> None:
        n, bn, d = self.normalize, self.student_bn, self.deliverable
        checks = (
            (n in NORMALIZE, f"normalize must be {'|'.join(NORMALIZE)}, got {n!r}"),
            (bn in ("train", "frozen"), f"student_bn must be train|frozen, got {bn!r}"),
            (d in ("teacher", "student"), f"deliverable must be teacher|student, got {d!r}"),
            (0 <= self.ema_max < 1, f"ema_max must be in [0, 1), got {self.ema_max}"),
            (
                self.weight_scale in WEIGHT_SCALES,
                f"weight_scale must be {'|'.join(WEIGHT_SCALES)}, got {self.weight_scale!r}",
            ),
        )
        for ok, line in checks:
            if not ok:
                raise ConfigError(line)


class EmaTeacher(Method):
    """A student and its EMA teacher (decision 8): what every teacher method shares. Its ``Options``
    carry ``student_bn``, ``deliverable`` and ``ema_max`` (:class:`MeanTeacherOptions`,
    ``SoftTeacherOptions``); the loss is the subclass's."""

    def __init__(self, source: SegModel, cfg: AdaptConfig, generator: torch.Generator) -> None:
        super().__init__(source, cfg, generator)
        if self.options.student_bn == "frozen":
            for bn in batchnorms(self.student):  # affine parameters still learn; statistics stay put
                bn.eval()
        self.teacher = copy.deepcopy(source.module).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @property
    def warmup(self) -> int:
        """Steps at the start in which the student does not learn yet (STvM's metric warm-up)."""
        return 0

    @property
    def batch_statistics(self) -> bool:
        return bool(self.options.student_bn == "train")

    @property
    def deliverable_role(self) -> str:
        return str(self.options.deliverable)

    def after_step(self, step: int) -> None:
        if step >= self.warmup:
            assert self.teacher is not None
            ema_update(self.teacher, self.student, ema_beta(step - self.warmup, self.options.ema_max))


@register_method
class MeanTeacher(EmaTeacher):
    """Teacher T = EMA of student S (decision 8); S learns from T's pseudo-labels on augmented frames."""

    name = "mean_teacher"
    summary = "mean teacher: all pseudo-labels, each pixel weighted 1"
    updates = "all student weights; the teacher follows by EMA"
    order = 40
    Options = MeanTeacherOptions

    def weigh(
        self, t_logits: Tensor, conf: Tensor, pseudo: Tensor, g_batch: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(extra loss, pixel weights [B,H,W], labels [B,H,W])`` from the teacher's logits, its
        max-softmax ``conf`` and argmax ``pseudo``: here no extra loss, weight 1, every pseudo-label."""
        return t_logits.new_zeros(()), torch.ones_like(conf), pseudo

    def mix(
        self, images: Tensor, labels: Tensor, weights: Tensor, g: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The student's input before augmentation, with labels and weights that travel with its pixels."""
        return images, labels, weights

    def loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, Logs]:
        assert self.teacher is not None
        with torch.no_grad(), phase("teacher"):
            t_logits = forward_logits(self.teacher, normalize(images, self.mean, self.std)).float()
            conf, pseudo = t_logits.softmax(1).max(1)
        logs: Logs = {"pseudo_hist": label_counts(pseudo)[: self.num_classes]}
        with phase("weigh"):
            loss, weights, labels = self.weigh(t_logits, conf, pseudo, g_batch, logs)
        logs["mean_weight"] = weights.mean()
        if step < self.warmup:  # the student waits until the weights mean something (decision 5)
            return loss, logs
        with phase("mix"):
            x, labels, weights = self.mix(images, labels, weights, g, logs)
        with phase("augment"):
            x = strong_augment(x, self.options.aug, g)
        with phase("student"):
            s_logits = forward_logits(self.net("student"), normalize(x, self.mean, self.std))
        with phase("student_loss"):
            index = labels.flatten().long()
            counts = label_counts(labels)  # this process's, gathered once below where needed
            totals = None  # the global batch's pixels per label value
            if self.options.weight_scale == "unit_mean":  # mean 1 over the global batch's valid pixels
                valid = (labels != IGNORE).to(weights.dtype)
                sums = self.comm.gather(torch.stack([(weights * valid).sum(), valid.sum()])[None]).sum(0)
                weights = weights * (sums[1] / sums[0].clamp_min(1e-12))
            elif self.options.weight_scale == "class_mean":  # mean 1 inside each pseudo-class
                sums = torch.zeros(IGNORE + 1, dtype=weights.dtype, device=weights.device)
                sums = sums.index_add_(0, index, weights.flatten())
                both = self.comm.gather(torch.stack([sums, counts.to(weights.dtype)])[None]).sum(0)
                totals = both[1]
                weights = weights * (totals / both[0].clamp_min(1e-12))[index].view_as(weights)
            norm = self.options.normalize
            if norm in CLASS_POWER:  # counts over the global batch (256 numbers per process), like M's loss
                if totals is None:
                    totals = self.comm.gather(counts[None]).sum(0)
                balance = class_balance(totals, self.num_classes, CLASS_POWER[norm])
                weights = weights * balance[index].view_as(weights)
                norm = "valid"
            backend = self.cfg.run.kernel_backend
            l_st = weighted_cross_entropy(s_logits, labels, weights, normalize=norm, backend=backend)
        logs["loss_st"] = l_st.detach()
        return loss + l_st, logs
