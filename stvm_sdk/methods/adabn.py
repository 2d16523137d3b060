"""``adabn``: re-estimate BatchNorm statistics on the target frames, nothing else (AdaBN)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stvm_sdk.methods.base import Method, Reach
from stvm_sdk.methods.parts.norm import batchnorms, fixed_batchnorms, norm_counts, other_norms
from stvm_sdk.methods.registry import register_method

if TYPE_CHECKING:
    from stvm_sdk.models.io import SegModel


@register_method
class AdaBN(Method):
    """Decision 0 alone: one pass over the target frames without gradients, then no training step."""

    name = "adabn"
    summary = "re-estimate BatchNorm statistics on the target frames"
    updates = "BatchNorm running statistics"
    order = 10

    @classmethod
    def _reach(cls, model: SegModel) -> Reach:
        n, fixed, others = (
            len(batchnorms(model.module)),
            fixed_batchnorms(model.module),
            other_norms(model.module),
        )
        line = f"re-estimates the statistics of {n} BatchNorm layer{'s' * (n != 1)}"
        if fixed:
            line += (
                f"; {fixed} traced BatchNorm layers keep fixed statistics (trace in train mode, or script)"
            )
        if others:
            line += f"; cannot adapt {norm_counts(others)}"
        counts = {"batchnorm_layers": n, "fixed_batchnorm_layers": fixed, "other_norm_layers": others}
        return Reach(line, fits=n > 0, weak=n == 0 or fixed > 0 or sum(others.values()) > n, counts=counts)
