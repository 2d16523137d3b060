"""``source_only``: no adaptation; the source model as it is (the table's lower bound)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stvm_sdk.methods.base import Method, Online, Reach
from stvm_sdk.methods.registry import register_method

if TYPE_CHECKING:
    from stvm_sdk.models.io import SegModel


@register_method
class SourceOnly(Method):
    """The source network, unchanged: not even its BatchNorm statistics."""

    name = "source_only"
    summary = "no adaptation: the source model as it is"
    updates = "nothing"
    order = 0
    reestimate_bn = False
    online = Online(adapts=False, bn_predict="running", follow_bn=False)  # predicts, as it is

    @classmethod
    def reach(cls, model: SegModel) -> Reach:
        return Reach("changes nothing (the baseline)")
