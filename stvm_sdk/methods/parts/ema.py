"""The teacher as an exponential moving average of the student (decision 8)."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(step: int, beta_max: float) -> float:
    """beta_t = min(1 - 1/(t+1), beta_max): a plain average early on, a slow EMA later."""
    return min(1.0 - 1.0 / (step + 1), beta_max)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, beta: float) -> None:
    """theta_T <- beta * theta_T + (1 - beta) * theta_S for parameters and floating buffers.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. Unlike DAFormer's EMA, BN
    running statistics are averaged too, so the teacher's normalisation follows the student's.
    """
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - beta)
    t_float, s_float = [], []
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        if tb.is_floating_point():
            t_float.append(tb)
            s_float.append(sb)
        else:
            tb.copy_(sb)
    if t_float:
        torch._foreach_lerp_(t_float, s_float, 1.0 - beta)
