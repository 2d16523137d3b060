"""Continual adaptation on a stream (the stream command): :class:`OnlineAdapter` (pure torch), its
settings and health rule, and :func:`stvm_sdk.stream.run.adapt_stream`, which reads frames, logs windows
and resumes. Every registered method runs on a stream through its
:attr:`~stvm_sdk.methods.base.Method.online`. Names load lazily: the settings alone do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AsyncAdapter": "stvm_sdk.stream.asynchronous",
    "Pacer": "stvm_sdk.stream.pace",
    "FrameResult": "stvm_sdk.stream.online",
    "OnlineAdapter": "stvm_sdk.stream.online",
    "online_config": "stvm_sdk.stream.online",
    "StreamConfig": "stvm_sdk.stream.settings",
    "HealthRule": "stvm_sdk.stream.settings",
}
__all__ = [
    "AsyncAdapter", "FrameResult", "HealthRule", "OnlineAdapter", "Pacer", "StreamConfig", "online_config",
]  # fmt: skip

if TYPE_CHECKING:
    from stvm_sdk.stream.asynchronous import AsyncAdapter
    from stvm_sdk.stream.online import FrameResult, OnlineAdapter, online_config
    from stvm_sdk.stream.pace import Pacer
    from stvm_sdk.stream.settings import HealthRule, StreamConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stvm_sdk.stream' has no attribute {name!r}")
