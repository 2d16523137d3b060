"""Evaluation: confusion matrices, IoU, and folder evaluation."""

from stvm_sdk.eval.evaluate import EvalResult, evaluate, evaluate_frames, predict, result_from_confusion
from stvm_sdk.eval.metrics import confusion_matrix, iou_per_class, mean_iou

__all__ = [
    "EvalResult", "confusion_matrix", "evaluate", "evaluate_frames", "iou_per_class", "mean_iou", "predict",
    "result_from_confusion",
]  # fmt: skip
