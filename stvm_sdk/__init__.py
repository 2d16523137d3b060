"""stvm_sdk: source-free adaptation of segmentation models (STvM), verified export and benchmarks.

Public API::

    from stvm_sdk import adapt, AdaptConfig, load_model, evaluate
    result = adapt("model.pt", "frames/", labels_dir="labels/")
"""

from stvm_sdk.api import AdaptResult, adapt
from stvm_sdk.config import METHODS, AdaptConfig
from stvm_sdk.errors import StvmError
from stvm_sdk.eval import EvalResult, evaluate
from stvm_sdk.models import SegModel, load_model, save_model

__version__ = "0.1.0"
__all__ = [
    "METHODS", "AdaptConfig", "AdaptResult", "EvalResult", "SegModel", "StvmError", "adapt", "evaluate",
    "load_model", "save_model", "__version__",
]  # fmt: skip
