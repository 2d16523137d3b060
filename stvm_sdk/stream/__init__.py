"""Continual adaptation on a stream (`stvm stream`): :class:`OnlineAdapter` (pure torch), its health
rule, and :func:`stvm_sdk.stream.run.adapt_stream`, which reads frames, logs windows and resumes."""

from stvm_sdk.stream.health import HealthRule
from stvm_sdk.stream.online import ONLINE_METHODS, FrameResult, OnlineAdapter, StreamConfig, online_config

__all__ = ["ONLINE_METHODS", "FrameResult", "HealthRule", "OnlineAdapter", "StreamConfig", "online_config"]
