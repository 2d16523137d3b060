"""What a training step needs from the other data-parallel processes, as a small interface.

The method stays pure torch: :class:`Collective` is the one-process case (every operation is the
identity or a no-op) and :mod:`stvm_sdk.distributed` supplies the ``torch.distributed`` version. A
step written against it computes, with N processes of batch B, what one process computes with
batch N*B wherever the loss is a set function of the batch (the metric loss, decision 4).
"""

from __future__ import annotations

from torch import Tensor, nn


class Collective:
    """Cross-process operations used by :meth:`stvm_sdk.methods.base.Method.step`; here, one process."""

    rank: int = 0
    world: int = 1

    def gather(self, x: Tensor) -> Tensor:
        """``x [B,...]`` from every process concatenated along dim 0 in rank order (gradients flow back)."""
        return x

    def sync_buffers(self, module: nn.Module) -> None:
        """Make ``module``'s floating buffers (BN running statistics) equal on every process."""
