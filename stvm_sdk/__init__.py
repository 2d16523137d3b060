"""stvm_sdk: source-free adaptation of segmentation models (STvM), verified export and benchmarks.

Public API::

    from stvm_sdk import adapt, AdaptConfig, load_model, evaluate
    result = adapt("model.pt", "frames/", labels_dir="labels/")

Names are resolved lazily (PEP 562) so ``import stvm_sdk`` and ``stvm --help`` do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "adapt": "stvm_sdk.api",
    "AdaptResult": "stvm_sdk.result",
    "AdaptConfig": "stvm_sdk.config",
    "Method": "stvm_sdk.methods.base",
    "register_method": "stvm_sdk.methods.registry",
    "method_names": "stvm_sdk.methods.registry",
    "StvmError": "stvm_sdk.errors",
    "EvalResult": "stvm_sdk.eval",
    "evaluate": "stvm_sdk.eval",
    "SegModel": "stvm_sdk.models",
    "load_model": "stvm_sdk.models",
    "save_model": "stvm_sdk.models",
    "save_native": "stvm_sdk.models",
    "train_source": "stvm_sdk.supervised",
    "TrainConfig": "stvm_sdk.supervised",
    "export_model": "stvm_sdk.export.pipeline",
    "ExportOptions": "stvm_sdk.export.pipeline",
    "bench_models": "stvm_sdk.bench.run",
    "load_run": "stvm_sdk.result",
    "reliability_map": "stvm_sdk.result",
    "OnlineAdapter": "stvm_sdk.stream.online",
    "StreamConfig": "stvm_sdk.stream.settings",
    "adapt_stream": "stvm_sdk.stream.run",
}
__all__ = [
    "AdaptConfig",
    "AdaptResult",
    "EvalResult",
    "ExportOptions",
    "Method",
    "OnlineAdapter",
    "SegModel",
    "StreamConfig",
    "StvmError",
    "TrainConfig",
    "__version__",
    "adapt",
    "bench_models",
    "evaluate",
    "export_model",
    "load_model",
    "load_run",
    "method_names",
    "register_method",
    "reliability_map",
    "save_model",
    "save_native",
    "adapt_stream",
    "train_source",
]

if TYPE_CHECKING:
    from stvm_sdk.api import adapt
    from stvm_sdk.bench.run import bench_models
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.errors import StvmError
    from stvm_sdk.eval import EvalResult, evaluate
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.methods.base import Method
    from stvm_sdk.methods.registry import method_names, register_method
    from stvm_sdk.models import SegModel, load_model, save_model, save_native
    from stvm_sdk.result import AdaptResult, load_run, reliability_map
    from stvm_sdk.stream.online import OnlineAdapter
    from stvm_sdk.stream.run import adapt_stream
    from stvm_sdk.stream.settings import StreamConfig
    from stvm_sdk.supervised import TrainConfig, train_source


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stvm_sdk' has no attribute {name!r}")
