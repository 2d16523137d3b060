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


ID_FORMATS = ("trainIds", "labelIds")


def class_id_image(classes: np.ndarray, ids: str, num_classes: int) -> np.ndarray:
    """Class map ``[H,W]`` as the ``uint8`` ids written to a PNG: the model's own class ids
    (Cityscapes trainIds, 255 = ignore) or, for a 19-class Cityscapes model, Cityscapes labelIds
    (ignore -> 0, "unlabeled") as cityscapesScripts' evaluation reads them."""
    from stvm_sdk.errors import ConfigError

    if ids == "trainIds":
        return classes.astype(np.uint8)
    if ids != "labelIds":
        from stvm_sdk.boundary.args import check_choice

        check_choice(ids, ID_FORMATS, "--ids")
    if num_classes != len(CITYSCAPES_PALETTE):
        raise ConfigError(
            f"--ids labelIds maps the 19 Cityscapes trainIds to labelIds, but this model has {num_classes} "
            "classes: use --ids trainIds (the model's own class ids)"
        )
    from stvm_sdk.synthetic.render.labels import TRAIN_TO_LABEL

    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(TRAIN_TO_LABEL)] = TRAIN_TO_LABEL
    return lut[classes.astype(np.uint8)]


def legend_image(class_names: list[str], palette: list[list[int]], row: int = 22) -> np.ndarray:
    """``uint8 [H,W,3]``: one row per class, its colour swatch, then ``id  name``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (260, row * len(class_names) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for k, name in enumerate(class_names):
        y = 4 + k * row
        draw.rectangle((6, y + 2, 46, y + row - 4), fill=tuple(palette[k]), outline=(0, 0, 0))
        draw.text((56, y + 4), f"{k:>3}  {name}", fill=(0, 0, 0))
    return np.asarray(img)
