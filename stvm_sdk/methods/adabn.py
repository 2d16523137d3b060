"""``adabn``: re-estimate BatchNorm statistics on the target frames, nothing else (AdaBN)."""

from __future__ import annotations

from stvm_sdk.methods.base import Method
from stvm_sdk.methods.registry import register_method


@register_method
class AdaBN(Method):
    """Decision 0 alone: one pass over the target frames without gradients, then no training step."""

    name = "adabn"
    summary = "re-estimate BatchNorm statistics on the target frames"
    updates = "BatchNorm running statistics"
    order = 10
