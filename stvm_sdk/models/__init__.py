"""Model loading/saving and the segmentation-model contract."""

from stvm_sdk.models.contract import (
    FeatureHook,
    capture_features,
    check_contract,
    find_classifier,
    forward_logits,
    normalize,
)
from stvm_sdk.models.io import (
    CITYSCAPES_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegModel,
    atomic_save,
    build_torchvision,
    from_module,
    load_model,
    save_model,
    save_native,
    save_torchscript,
)

__all__ = [
    "CITYSCAPES_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "FeatureHook", "SegModel", "atomic_save",
    "build_torchvision", "capture_features", "check_contract", "find_classifier", "forward_logits",
    "from_module", "load_model", "normalize", "save_model", "save_native", "save_torchscript",
]  # fmt: skip
