"""Collectives that carry gradients, and BatchNorm synchronised across processes on any device.

Gradient convention. Under DistributedDataParallel each process backpropagates its own loss L_r and
DDP *averages* parameter gradients, i.e. training minimises (1/N) sum_r L_r. When L_r depends on
tensors of other processes (a sum over the global batch, a gathered embedding map), the gradient
that process s must produce for its own tensor x_s is sum_r dL_r/dx_s: the backward of a
cross-process sum is therefore again a sum (an all-reduce). With that, N processes of batch B get
the gradients of one process of batch N*B whenever the one-process loss is the mean of the L_r.

``torch.nn.SyncBatchNorm`` only runs on GPUs; :class:`CpuSyncBatchNorm` is the same maths with these
collectives for CPU processes (gloo: what CI and the tests run).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)  # see the module docstring: the adjoint of a cross-process sum is a sum
        return grad


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum over processes of dL_r/d(gathered); keep this process's rows
        return grad.chunk(ctx.world)[ctx.rank]


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over processes, differentiable (gradient convention above)."""
    return _AllReduceSum.apply(x)


def all_gather_cat(x: Tensor) -> Tensor:
    """``x [B,...]`` of every process concatenated along dim 0 in rank order; differentiable when
    ``x`` requires grad. Every process must pass the same shape."""
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _AllGather.apply(x)


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm over the batch of all processes for non-CUDA tensors (gloo), where torch has none.

    Outside training, or in a one-process world, it is plain BatchNorm. In training it computes the
    global mean, then the global biased variance of the centred input (two passes: no
    E[x^2]-E[x]^2 cancellation), and updates the running statistics as BatchNorm does (unbiased
    variance; ``momentum``, or the cumulative average when it is None). Not a subclass of
    ``nn.SyncBatchNorm`` on purpose: DDP refuses those on CPU modules.
    """

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 (BatchNorm's argument name)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        if dist.get_world_size() == 1:
            return super().forward(input)
        return self._global_batch_norm(input)

    def _global_batch_norm(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # The pixel count rides along with the sums: one all-reduce, not two.
        sums = all_reduce_sum(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), f)  # type: ignore[union-attr]
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), f)  # type: ignore[union-attr]
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


_SYNCED = (nn.SyncBatchNorm, CpuSyncBatchNorm)


def _swap(new: _BatchNorm, old: _BatchNorm) -> _BatchNorm:
    """Move ``old``'s parameters and buffers (the same tensors: optimisers keep working) into ``new``."""
    new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    return new.train(old.training)


def convert_sync_batchnorm(module: nn.Module, cuda: bool) -> int:
    """Replace every BatchNorm*d under ``module`` by a synchronised one, in place; return how many.

    ``nn.SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm` elsewhere.
    """
    cls: type[_BatchNorm] = nn.SyncBatchNorm if cuda else CpuSyncBatchNorm
    n = 0
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, _SYNCED):
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.original_type = type(child)  # type: ignore[assignment]  # for revert_sync_batchnorm
            setattr(module, name, _swap(new, child))
            n += 1
        else:
            n += convert_sync_batchnorm(child, cuda)
    return n


def revert_sync_batchnorm(module: nn.Module) -> None:
    """Undo :func:`convert_sync_batchnorm`: saved and exported models hold plain BatchNorm layers."""
    for name, child in module.named_children():
        if isinstance(child, _SYNCED):
            cls = getattr(child, "original_type", nn.BatchNorm2d)
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            setattr(module, name, _swap(new, child))
        else:
            revert_sync_batchnorm(child)
