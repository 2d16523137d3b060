"""A stream's settings: how it adapts (:class:`StreamConfig`) and when a window is unhealthy
(:class:`HealthRule`). Frozen, validated dataclasses; torch-free, so the command line reads their
defaults and help without loading a model library."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stvm_sdk.errors import ConfigError


@dataclass(frozen=True)
class HealthRule:
    """When a window is unhealthy, and what happens then (the stream command's ``--help`` lists the flags)."""

    js_max: float = 0.45  # hist_js above this: unhealthy
    min_class_ratio: float = 0.5  # fewer than this share of the source model's classes: unhealthy
    min_share: float = 0.002  # a class "is predicted" on at least this share of the window's pixels
    max_confidence: float = 0.995  # mean max-softmax above this: certain everywhere, boundaries included
    patience: int = 2  # unhealthy windows in a row before a restore
    restore: str = "last_healthy"  # what a collapse restores: last_healthy | source | off (log only)

    def __post_init__(self) -> None:
        if not (0 < self.js_max <= 1 and 0 <= self.min_class_ratio <= 1 and 0 < self.min_share < 1):
            raise ConfigError("health: js_max in (0,1], min_class_ratio in [0,1], min_share in (0,1)")
        if not 0 < self.max_confidence <= 1:
            raise ConfigError(f"health.max_confidence must be in (0,1], got {self.max_confidence}")
        if self.patience < 1:
            raise ConfigError(f"health.patience must be >= 1, got {self.patience}")
        if self.restore not in ("last_healthy", "source", "off"):
            raise ConfigError(f"health.restore must be last_healthy, source or off, got {self.restore!r}")


@dataclass(frozen=True)
class StreamConfig:
    """How the stream adapts; the method's own decisions stay in :class:`~stvm_sdk.config.AdaptConfig`."""

    every: int = 1  # adapt on every N-th frame (prediction runs on every frame)
    batch_size: int = 4  # frames per adaptation step: the newest one and recent ones from the buffer
    buffer: int = 16  # ring buffer of recent adapted frames (memory: buffer x 3 x H x W float32)
    bn_momentum: float = 0.1  # BatchNorm statistics follow the stream at this momentum (0: fixed)
    # How the deliverable normalises when it predicts: "running" statistics (those followed at
    # bn_momentum; what an exported model uses) or each "frame"'s own (test-time statistics). A method
    # whose Online.bn_predict is not "stream" keeps its own rule.
    bn_predict: str = "frame"
    restore_prob: float = 0.01  # share of trained weights set back to the source's per step (0: off)
    window: int = 20  # frames per health window (one metrics.jsonl line each)
    # Every N frames the method goes back to the source model, whatever its health (RDumb's periodic
    # reset, Press et al., NeurIPS 2023); 0: never.
    reset_every: int = 0
    health: HealthRule = field(default_factory=HealthRule)

    def __post_init__(self) -> None:
        checks = (
            (self.every >= 1, f"every must be >= 1, got {self.every}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.buffer >= self.batch_size, f"buffer ({self.buffer}) must hold a batch ({self.batch_size})"),
            (0 <= self.bn_momentum <= 1, f"bn_momentum must be in [0,1], got {self.bn_momentum}"),
            (0 <= self.restore_prob < 1, f"restore_prob must be in [0,1), got {self.restore_prob}"),
            (self.window >= 1, f"window must be >= 1, got {self.window}"),
            (self.reset_every >= 0, f"reset_every must be >= 0 (0: never), got {self.reset_every}"),
            (self.bn_predict in ("running", "frame"), f"bn_predict must be running|frame: {self.bn_predict}"),
        )
        for ok, line in checks:
            if not ok:
                raise ConfigError(f"stream: {line}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamConfig:
        return cls(**{**data, "health": HealthRule(**data.get("health", {}))})
