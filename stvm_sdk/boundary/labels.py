"""Label maps against the model they score: class ids must exist in the model.

A label pixel is a class id in ``0..K-1`` or the ignore index 255. Any other value means the labels
belong to another label set (19-class Cityscapes trainIds against a 7-class model, labelIds read as
trainIds, a colour map saved as grey): an error naming the file and the values found, because scoring
them would silently mis-count. ``ignore_out_of_range=True`` (``--ignore-out-of-range``) scores such
pixels as ignored instead, for users who know their labels hold extra classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from stvm_sdk.errors import DataError

IGNORE_INDEX = 255


def check_label_ids(
    label: Tensor, num_classes: int, path: Path | str | None, *, ignore_out_of_range: bool = False
) -> Tensor:
    """``label`` (int ``[H,W]``) unchanged, or with out-of-range ids set to 255 when allowed.

    Raises:
        DataError: a value outside ``0..K-1`` and 255, unless ``ignore_out_of_range``.
    """
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if not bool(bad.any()):
        return label
    if ignore_out_of_range:
        return torch.where(bad, torch.full_like(label, IGNORE_INDEX), label)
    values = torch.unique(label[bad]).tolist()
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise DataError(
        f"label {path} holds class ids {shown} but the model has {num_classes} classes "
        f"(ids 0..{num_classes - 1}, 255 = ignore): use labels of the model's label set, or pass "
        "--ignore-out-of-range to score those pixels as ignored"
    )
