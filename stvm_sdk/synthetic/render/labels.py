"""Cityscapes label ids used by the generator.

Scenes are painted with Cityscapes *labelIds* (so ignored categories such as the ego vehicle or
static clutter keep their own id in ``*_gtFine_labelIds.png``); trainIds are derived with
:data:`LABEL_TO_TRAIN`, the official Cityscapes table (kept once, in :mod:`stvm_sdk.data.images`).
"""

from __future__ import annotations

import numpy as np

from stvm_sdk.data.images import LABEL_ID_LUT, TRAIN_ID_TO_LABEL_ID

IGNORE = 255

TRAIN_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip

# labelId of each trainId 0..18 (one table for the whole SDK: stvm_sdk.data.images).
TRAIN_TO_LABEL = tuple(int(v) for v in TRAIN_ID_TO_LABEL_ID[: len(TRAIN_CLASSES)])

# Named labelIds the scene code paints with (train classes and the ignored ones we draw).
UNLABELED, EGO_VEHICLE, STATIC, DYNAMIC = 0, 1, 4, 5
ROAD, SIDEWALK, PARKING, RAIL_TRACK = 7, 8, 9, 10
BUILDING, WALL, FENCE, GUARD_RAIL = 11, 12, 13, 14
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN = 17, 19, 20
VEGETATION, TERRAIN, SKY = 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33


# labelId -> trainId lookup table (256 entries; everything not a train class maps to 255).
LABEL_TO_TRAIN = LABEL_ID_LUT[:256]


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 labelId map ``[H, W]`` to trainIds ``[H, W]`` (0..18, 255 = ignore)."""
    return LABEL_TO_TRAIN[label_ids]
