"""Evaluation: confusion matrices, IoU, and folder evaluation."""

from stvm_sdk.eval.evaluate import (
    EvalResult,
    evaluate,
    evaluate_frames,
    open_model,
    predict,
    result_from_confusion,
)
from stvm_sdk.eval.metrics import confusion_matrix, iou_per_class, mean_iou

__all__ = [
    "EvalResult", "confusion_matrix", "evaluate", "evaluate_frames", "iou_per_class", "mean_iou",
    "open_model", "predict", "result_from_confusion",
]  # fmt: skip
