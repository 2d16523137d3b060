"""BatchNorm handling: target statistics (decision 0 / AdaBN) and tent's trainable parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from stvm_sdk.models.contract import forward_logits

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BN_TYPES)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace BN running statistics with their cumulative average over ``batches`` (no gradients).

    Only the BN layers run in train mode (dropout etc. stay in eval), momentum is ``None`` (an exact
    average over all batches) and restored afterwards. Returns the number of images seen.

    Args:
        model: network to update in place.
        batches: normalised image batches ``[B,3,H,W]`` on the model's device.
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for x in batches:
            forward_logits(model, x)
            seen += x.shape[0]
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.train(was_training)
    return seen


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Tent: train only BN affine parameters, with BN normalising by batch statistics."""
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for bn in batchnorms(model):
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.requires_grad_(True)
                params.append(p)
    return params
