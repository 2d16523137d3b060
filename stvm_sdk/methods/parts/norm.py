"""BatchNorm handling: target statistics (decision 0 / AdaBN) and tent's trainable parameters.

A BatchNorm layer is an eager ``nn.BatchNorm*d``/``SyncBatchNorm`` or, in a TorchScript model, a
scripted module whose ``original_name`` is one of theirs. A *scripted* BatchNorm updates its running
statistics in train mode like an eager one; a *traced* one does not (tracing baked eval mode into
its graph), so its statistics are fixed: :func:`batchnorms` leaves those out and
:func:`fixed_batchnorms` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from stvm_sdk.models.contract import forward_logits

# Every eager BatchNorm: BatchNorm1d/2d/3d, their lazy forms, SyncBatchNorm, dist_ops.CpuSyncBatchNorm.
BN_TYPES = (_BatchNorm,)
# ``original_name`` of a scripted BatchNorm -> the rank of a test input for it.
_BN_RANK = {"BatchNorm1d": 2, "BatchNorm2d": 4, "BatchNorm3d": 5, "SyncBatchNorm": 4, "CpuSyncBatchNorm": 4}
# The other normalisation layers (statistics per sample or per group): neither AdaBN nor tent adapts them.
OTHER_NORM_TYPES = (
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm,
    nn.LocalResponseNorm,
)  # fmt: skip
_OTHER_NORM_NAMES = frozenset(t.__name__ for t in OTHER_NORM_TYPES)


def _scripted_bn_rank(m: nn.Module) -> int | None:
    if isinstance(m, torch.jit.ScriptModule) and hasattr(m, "running_mean"):
        return _BN_RANK.get(getattr(m, "original_name", ""))
    return None


@torch.no_grad()
def _updates_statistics(bn: Any, rank: int) -> bool:
    """Whether scripted ``bn`` updates its running statistics in train mode (tried on a random batch;
    its statistics and mode are put back)."""
    saved = {k: v.clone() for k, v in bn.state_dict().items()}
    was_training = bn.training
    mean = bn.running_mean
    try:
        bn.train()
        shape = (2, mean.shape[0]) + (2,) * (rank - 2)
        bn(torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(mean))
        return not torch.equal(bn.running_mean, saved["running_mean"])
    except Exception:  # e.g. SyncBatchNorm on CPU: it cannot be updated here
        return False
    finally:
        bn.train(was_training)
        bn.load_state_dict(saved)


def batchnorms(model: nn.Module) -> list[Any]:
    """The BatchNorm layers of ``model`` whose running statistics can be updated (eager or scripted)."""
    out: list[Any] = []
    for m in model.modules():
        if (
            isinstance(m, BN_TYPES)
            or (rank := _scripted_bn_rank(m)) is not None
            and _updates_statistics(m, rank)
        ):
            out.append(m)
    return out


def fixed_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers of a traced model keep fixed statistics (nothing can update them)."""
    return sum(
        1
        for m in model.modules()
        if (rank := _scripted_bn_rank(m)) is not None and not _updates_statistics(m, rank)
    )


def other_norms(model: nn.Module) -> dict[str, int]:
    """``{layer type: count}`` of the normalisation layers that are not BatchNorm (LayerNorm, GroupNorm,
    ...), eager or scripted, including a library's subclasses of them."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, OTHER_NORM_TYPES):
            name = next(t.__name__ for t in OTHER_NORM_TYPES if isinstance(m, t))
        elif isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", "") in _OTHER_NORM_NAMES:
            name = m.original_name
        else:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts


def norm_counts(others: dict[str, int]) -> str:
    """``{"LayerNorm": 19}`` -> ``"19 LayerNorm layers"``."""
    return ", ".join(f"{c} {name} layer{'s' * (c != 1)}" for name, c in others.items())


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace BN running statistics with their cumulative average over ``batches`` (no gradients).

    Only the BN layers run in train mode (dropout etc. stay in eval), momentum is ``None`` (an exact
    average over all batches) and restored afterwards. A scripted BatchNorm's momentum is a constant
    of its graph: its statistics are zeroed before each batch, so that after it they are momentum x
    the batch's, and averaged here the same way. Returns the number of images seen.

    Args:
        model: network to update in place.
        batches: normalised image batches ``[B,3,H,W]`` on the model's device.
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    eager: list[Any] = [bn for bn in bns if isinstance(bn, BN_TYPES)]
    # A scripted BatchNorm without momentum already averages cumulatively: reset it like an eager one.
    scripted: list[Any] = [bn for bn in bns if not isinstance(bn, BN_TYPES) and bn.momentum is not None]
    cumulative: list[Any] = [bn for bn in bns if not isinstance(bn, BN_TYPES) and bn.momentum is None]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    momenta = [bn.momentum for bn in eager]
    for bn in eager:
        bn.reset_running_stats()
        bn.momentum = None
    for bn in cumulative:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
    for bn in bns:
        bn.train()
    sums = [(torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)) for bn in scripted]
    seen = batches_seen = 0
    try:
        for x in batches:
            for bn in scripted:
                bn.running_mean.zero_()
                bn.running_var.zero_()
            forward_logits(model, x)
            for bn, (s_mean, s_var) in zip(scripted, sums, strict=True):
                s_mean += bn.running_mean / float(bn.momentum)
                s_var += bn.running_var / float(bn.momentum)
            seen += x.shape[0]
            batches_seen += 1
        for bn, (s_mean, s_var) in zip(scripted, sums, strict=True):
            bn.running_mean.copy_(s_mean / max(batches_seen, 1))
            bn.running_var.copy_(s_var / max(batches_seen, 1) if batches_seen else torch.ones_like(s_var))
            bn.num_batches_tracked.fill_(batches_seen)
    finally:
        for bn, m in zip(eager, momenta, strict=True):
            bn.momentum = m
        for module, training in modes:
            module.training = training
    return seen


def tent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The BatchNorm affine parameters tent trains (eager BatchNorm layers only)."""
    return [
        p for bn in model.modules() if isinstance(bn, BN_TYPES) for p in (bn.weight, bn.bias) if p is not None
    ]


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Tent: train only BN affine parameters, with BN normalising by batch statistics.

    Only the BatchNorm layers are put in train mode: dropout, drop-path and every other module stay
    in eval mode, as at test time.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for bn in model.modules():
        if isinstance(bn, BN_TYPES):
            bn.train()
    params = tent_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def mix_statistics(model: nn.Module, source: nn.Module, source_share: float) -> None:
    """BatchNorm running statistics of ``model`` become ``source_share`` x ``source``'s plus the rest of
    its own (mean and variance alike: the statistics mixing of DIGA, Wang et al., CVPR 2023)."""
    if source_share == 0:
        return
    for bn, src in zip(batchnorms(model), batchnorms(source), strict=True):
        bn.running_mean.mul_(1 - source_share).add_(src.running_mean, alpha=source_share)
        bn.running_var.mul_(1 - source_share).add_(src.running_var, alpha=source_share)


def mixed_statistics_hooks(model: nn.Module, source_share: float) -> list[Any]:
    """Forward hooks under which every eager BatchNorm of ``model`` (in eval mode) normalises by
    ``source_share`` x its running statistics + the rest x the input's own, then puts its running
    statistics back: predictions from mixed statistics without a backward pass. A branch with one value
    per channel (DeepLabV3's image pooling) keeps its running statistics. Remove the handles after."""
    stash: dict[int, tuple[Tensor, Tensor]] = {}

    def before(bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0]
        if bn.training or x.numel() <= x.shape[1]:
            return
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        rm: Tensor = bn.running_mean  # type: ignore[assignment]
        rv: Tensor = bn.running_var  # type: ignore[assignment]
        stash[id(bn)] = (rm.clone(), rv.clone())
        rm.mul_(source_share).add_(mean.to(rm.dtype), alpha=1 - source_share)
        rv.mul_(source_share).add_(var.to(rv.dtype), alpha=1 - source_share)

    def after(bn: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        saved = stash.pop(id(bn), None)
        if saved is not None:
            bn.running_mean.copy_(saved[0])  # type: ignore[union-attr,operator]
            bn.running_var.copy_(saved[1])  # type: ignore[union-attr,operator]

    handles = []
    for bn in model.modules():
        if isinstance(bn, BN_TYPES) and bn.track_running_stats:
            handles += [bn.register_forward_pre_hook(before), bn.register_forward_hook(after)]
    return handles
