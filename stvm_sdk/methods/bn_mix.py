"""``bn_mix``: BatchNorm statistics mixed between the source model's and the target's, no backward.

Offline: decision 0's target statistics, then ``source_share`` x the source model's + the rest x the
target's (mean and variance alike). On a stream: each frame is normalised by ``source_share`` x the
running (source) statistics + the rest x the frame's own, without a training step or a running update
(the statistics mixing of DIGA, Wang et al., CVPR 2023; ``source_share = 0`` is per-frame test-time
statistics alone). The cheapest adaptation there is: a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.adabn import AdaBN
from stvm_sdk.methods.base import Online
from stvm_sdk.methods.parts.options import options_of
from stvm_sdk.methods.registry import register_method

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig


@dataclass(frozen=True)
class BnMixOptions:
    """``[methods.bn_mix]``."""

    source_share: float = 0.8  # share of the source statistics (lambda); the rest is the target's

    def __post_init__(self) -> None:
        if not 0 <= self.source_share <= 1:
            raise ConfigError(f"methods.bn_mix.source_share must be in [0, 1], got {self.source_share}")


@register_method
class BnMix(AdaBN):
    """AdaBN's statistics, mixed with the source's; on a stream, per frame and without an update."""

    name = "bn_mix"
    summary = "BatchNorm statistics mixed between the source's and the target's (no backward)"
    updates = "BatchNorm running statistics (a share kept from the source)"
    order = 12
    Options = BnMixOptions
    online = Online(adapts=False, bn_predict="mix", follow_bn=False)  # nothing changes over time

    @classmethod
    def source_share(cls, cfg: AdaptConfig) -> float:
        return float(options_of(cls, cfg.methods.get(cls.name)).source_share)
