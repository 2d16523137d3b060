"""``tent``: entropy minimisation on BatchNorm affine parameters (Wang et al., ICLR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.base import Logs, Method, Online, Reach, phase
from stvm_sdk.methods.parts.norm import BN_TYPES, configure_tent, norm_counts, other_norms, tent_parameters
from stvm_sdk.methods.registry import register_method
from stvm_sdk.models.contract import forward_logits, normalize

if TYPE_CHECKING:
    from stvm_sdk.models.io import SegModel


@dataclass(frozen=True)
class TentOptions:
    """Tent's own knobs (config section ``[methods.tent]``)."""

    lr: float = 1e-4  # Adam's constant learning rate on the BN affine parameters

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"methods.tent.lr must be > 0, got {self.lr}")


@register_method
class Tent(Method):
    """The student's BN layers normalise by batch statistics; only their scale and shift learn."""

    name = "tent"
    summary = "entropy minimisation on BatchNorm affine parameters"
    updates = "BatchNorm affine parameters (statistics from each batch)"
    order = 20
    eager_only = "re-parametrises BatchNorm"
    Options = TentOptions
    own_lr = "lr"  # its own Adam: no optim.* key is read
    # On a stream as offline: each frame normalised by its own statistics, a batch's by the batch's
    # (so a training step needs two frames); the running statistics are not used.
    online = Online(
        bn_predict="frame", follow_bn=False, min_batch=2, min_batch_why="normalises by batch statistics"
    )

    @classmethod
    def _reach(cls, model: SegModel) -> Reach:
        module = model.module
        n = sum(p.numel() for p in tent_parameters(module))
        total = sum(p.numel() for p in module.parameters())
        layers = sum(1 for m in module.modules() if isinstance(m, BN_TYPES))
        others = other_norms(module)
        line = (
            f"tunes {n:,} of {total:,} parameters: the scale and shift of {layers} BatchNorm "
            f"layer{'s' * (layers != 1)}"
        )
        if others:
            line += f"; {norm_counts(others)} are not adapted"
        counts: dict[str, Any] = {"parameters": n, "parameters_total": total, "batchnorm_layers": layers}
        counts["other_norm_layers"] = others
        return Reach(line, fits=n > 0, weak=n == 0 or sum(others.values()) > layers, counts=counts)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(configure_tent(self.student), lr=self.options.lr, betas=(0.9, 0.999))

    def lr_at(self, step: int) -> float:
        return float(self.options.lr)  # constant, as in tent

    def loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, Logs]:
        with phase("student"):
            logits = forward_logits(self.net("student"), normalize(images, self.mean, self.std)).float()
        logp = nnf.log_softmax(logits, 1)
        entropy = -(logp.exp() * logp).sum(1).mean()
        return entropy, {"loss_entropy": entropy.detach()}
