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
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stvm_sdk.kernels import weighted_cross_entropy
from stvm_sdk.methods.base import Logs, Method, phase
from stvm_sdk.methods.parts.augment import strong_augment
from stvm_sdk.methods.parts.ema import ema_beta, ema_update
from stvm_sdk.methods.parts.norm import batchnorms
from stvm_sdk.methods.parts.pseudo import CLASS_POWER, class_balance, label_counts
from stvm_sdk.methods.registry import register_method
from stvm_sdk.models.contract import forward_logits, normalize

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.models.io import SegModel

IGNORE = 255


@register_method
class MeanTeacher(Method):
    """Teacher T = EMA of student S (decision 8); S learns from T's pseudo-labels on augmented frames."""

    name = "mean_teacher"
    summary = "mean teacher: all pseudo-labels, each pixel weighted 1"
    updates = "all student weights; the teacher follows by EMA"
    order = 40

    def __init__(self, source: SegModel, cfg: AdaptConfig, generator: torch.Generator) -> None:
        super().__init__(source, cfg, generator)
        if cfg.student_bn == "frozen":
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
    def deliverable_role(self) -> str:
        return self.cfg.deliverable

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
            x = strong_augment(x, self.cfg.aug, g)
        with phase("student"):
            s_logits = forward_logits(self.net("student"), normalize(x, self.mean, self.std))
        with phase("student_loss"):
            norm = self.cfg.reliability.normalize
            if norm in CLASS_POWER:  # counts over the global batch (256 numbers per process), like M's loss
                counts = self.comm.gather(label_counts(labels)[None]).sum(0)
                balance = class_balance(counts, self.num_classes, CLASS_POWER[norm])
                weights = weights * balance[labels.long()]
                norm = "valid"
            backend = self.cfg.run.kernel_backend
            l_st = weighted_cross_entropy(s_logits, labels, weights, normalize=norm, backend=backend)
        logs["loss_st"] = l_st.detach()
        return loss + l_st, logs

    def after_step(self, step: int) -> None:
        if step >= self.warmup:
            assert self.teacher is not None
            ema_update(self.teacher, self.student, ema_beta(step - self.warmup, self.cfg.optim.ema_max))
