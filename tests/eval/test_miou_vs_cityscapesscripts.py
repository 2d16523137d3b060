"""Our mIoU equals the official cityscapesscripts evaluator's on the same predictions (to 1e-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stvm_sdk.data import read_label
from stvm_sdk.data.images import TRAIN_ID_TO_LABEL_ID
from stvm_sdk.eval import confusion_matrix, iou_per_class, mean_iou

cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")


def test_miou_matches_cityscapesscripts(tmp_path: Path) -> None:
    from stvm_sdk.synthetic.dataset import generate

    root = generate(tmp_path / "data", "target", 3, seed=5, size=(48, 96), split="val", workers=1)
    gts = sorted((root / "gtFine").rglob("*_gtFine_labelIds.png"))
    rng = np.random.default_rng(0)
    preds, conf = [], torch.zeros(19, 19, dtype=torch.int64)
    for i, gt in enumerate(gts):
        train = read_label(gt)
        pred = np.where(train == 255, rng.integers(0, 19, train.shape), train).astype(np.uint8)
        noise = rng.random(train.shape) < 0.3  # corrupt 30% of pixels with random classes
        pred[noise] = rng.integers(0, 19, int(noise.sum()))
        path = tmp_path / f"pred_{i}.png"
        Image.fromarray(TRAIN_ID_TO_LABEL_ID[pred]).save(path)  # the evaluator reads labelIds
        preds.append(str(path))
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(train.astype(np.int64)), 19)
    args = cs_eval.args
    args.evalInstLevelScore = False  # crashes on NumPy 2 (docs/environment.md) and is not what we compare
    args.quiet = True
    args.JSONOutput = False
    args.exportFile = str(tmp_path / "result.json")
    result = cs_eval.evaluateImgLists(preds, [str(g) for g in gts], args)
    theirs = result["averageScoreClasses"]
    assert abs(mean_iou(conf) - theirs) < 1e-6
    ours = iou_per_class(conf)
    for train_id, label_id in enumerate(TRAIN_ID_TO_LABEL_ID[:19]):
        name = cs_eval.id2label[int(label_id)].name
        want = result["classScores"][name]
        got = float(ours[train_id])
        assert (np.isnan(want) and np.isnan(got)) or abs(got - want) < 1e-6, name
