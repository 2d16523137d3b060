"""Users' target frames: discovery, decoding, batching (the synthetic benchmark is stvm_sdk.synthetic)."""

from stvm_sdk.data.frames import Frame, FrameFolder, find_images, match_label, scan_frames
from stvm_sdk.data.images import IGNORE_INDEX, read_image, read_label

__all__ = [
    "IGNORE_INDEX",
    "Frame",
    "FrameFolder",
    "find_images",
    "match_label",
    "read_image",
    "read_label",
    "scan_frames",
]
