"""Class colours (Cityscapes palette) and the images `stvm predict` writes from a class map."""

from __future__ import annotations

import numpy as np

# Official Cityscapes colours of trainIds 0..18 (cityscapesscripts' labels.py).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
IGNORE_COLOUR = (0, 0, 0)


def palette_for(num_classes: int) -> list[list[int]]:
    """``num_classes`` RGB colours: Cityscapes' first, then a fixed pseudo-random draw for the rest."""
    colours = [list(c) for c in CITYSCAPES_PALETTE[:num_classes]]
    rng = np.random.default_rng(19)  # fixed: the same class gets the same colour in every run
    while len(colours) < num_classes:
        colours.append([int(v) for v in rng.integers(0, 256, 3)])
    return colours


def colorize(classes: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """Class map ``[H,W]`` (ids, 255 = ignore) -> ``uint8 [H,W,3]`` RGB."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[255] = IGNORE_COLOUR
    return lut[classes.astype(np.uint8)]


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour map over the ``uint8 [H,W,3]`` image (``alpha`` = weight of the colours)."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def confidence_image(prob: np.ndarray) -> np.ndarray:
    """Max softmax probability ``[H,W]`` in [0,1] -> ``uint8 [H,W]`` grey (white = confident)."""
    return np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)
