"""Painter's-algorithm canvas of *material indices*.

Every shape is drawn once, with PIL, into a single 32-bit index image: later shapes cover earlier
ones (back to front). Each index names a :class:`Material` that carries both the Cityscapes labelId
and the appearance, so the label map and the image come from the very same pixels (exact masks) and
shading runs afterwards as a handful of vectorised numpy passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# Texture kinds (see shading.py). Screen-space kinds use ``scale`` in pixels, ground kinds in metres.
FLAT, NOISE, ASPHALT, TILES, BRICKS, LEAVES, GLASS, METAL, CLOUDS = range(9)

Pts = Sequence[tuple[float, float]]


@dataclass
class Material:
    """What a painted pixel is (``label``, a Cityscapes labelId) and how it looks.

    ``depth`` feeds fog: 0 means "on the ground" (depth from the camera model), ``inf`` is sky.
    ``light`` is direct lighting (lit face, shaded face, in a cast shadow); ``emit`` is light the
    surface gives off at night; ``ground`` surfaces receive cast shadows from the shadow layer.
    """

    label: int
    rgb: tuple[float, float, float]
    tex: int = FLAT
    amp: float = 0.0
    scale: float = 4.0
    depth: float = 0.0
    grad: float = 0.0
    light: float = 1.0
    emit: float = 0.0
    ground: bool = False
    box: list[float] = field(default_factory=lambda: [np.inf, np.inf, -np.inf, -np.inf])


class MaterialTable:
    """Materials as column arrays, so per-pixel properties are one fancy-index away."""

    def __init__(self, mats: list[Material]) -> None:
        self.label = np.array([m.label for m in mats], dtype=np.uint8)
        self.rgb = np.array([m.rgb for m in mats], dtype=np.float32).reshape(-1, 3)
        self.tex = np.array([m.tex for m in mats], dtype=np.int8)
        self.amp = np.array([m.amp for m in mats], dtype=np.float32)
        self.scale = np.array([max(m.scale, 1e-3) for m in mats], dtype=np.float32)
        self.depth = np.array([m.depth for m in mats], dtype=np.float32)
        self.grad = np.array([m.grad for m in mats], dtype=np.float32)
        self.light = np.array([m.light for m in mats], dtype=np.float32)
        self.emit = np.array([m.emit for m in mats], dtype=np.float32)
        self.ground = np.array([m.ground for m in mats], dtype=bool)
        box = np.array([m.box for m in mats], dtype=np.float32).reshape(-1, 4)
        box[~np.isfinite(box)] = 0.0
        box[:, 2] = np.maximum(box[:, 2], box[:, 0] + 1.0)
        box[:, 3] = np.maximum(box[:, 3], box[:, 1] + 1.0)
        self.box = box


class Canvas:
    """Index image plus a soft cast-shadow layer, both drawn with PIL."""

    def __init__(self, h: int, w: int, background: Material) -> None:
        self.h, self.w = h, w
        self.mats: list[Material] = [background]
        background.box = [0.0, 0.0, float(w), float(h)]
        self._index = Image.new("I", (w, h), 0)
        self._draw = ImageDraw.Draw(self._index)
        self._shadow = Image.new("L", (w, h), 0)
        self._shadow_draw = ImageDraw.Draw(self._shadow)

    def add(self, mat: Material) -> int:
        """Register a material; returns its index for the drawing calls."""
        self.mats.append(mat)
        return len(self.mats) - 1

    def _add_box(self, mat: int, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Grow the material's bounding box (it anchors local textures); False if off screen."""
        if x1 < 0 or x0 >= self.w or y1 < 0 or y0 >= self.h:
            return False
        b = self.mats[mat].box
        b[0], b[1], b[2], b[3] = min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)
        return True

    def polygon(self, pts: Pts, mat: int) -> None:
        """Fill a polygon given in pixel coordinates."""
        if len(pts) < 3:
            return
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if self._add_box(mat, min(xs), min(ys), max(xs), max(ys)):
            self._draw.polygon(list(zip(xs, ys, strict=True)), fill=mat)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, mat: int) -> None:
        """Fill an axis-aligned ellipse (at least one pixel, so distant things do not vanish)."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        if self._add_box(mat, cx - rx, cy - ry, cx + rx, cy + ry):
            self._draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=mat)

    def line(self, pts: Pts, width: float, mat: int) -> None:
        """A polyline of the given pixel width (bicycle frames, pole arms)."""
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if self._add_box(mat, min(xs), min(ys), max(xs), max(ys)):
            self._draw.line(list(zip(xs, ys, strict=True)), fill=mat, width=max(1, round(width)))

    def ring(self, cx: float, cy: float, rx: float, ry: float, width: float, mat: int) -> None:
        """An ellipse outline (wheels seen from the side)."""
        rx, ry = max(rx, 1.0), max(ry, 1.0)
        if self._add_box(mat, cx - rx, cy - ry, cx + rx, cy + ry):
            self._draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=mat, width=max(1, round(width)))

    def shadow(self, pts: Pts, strength: float = 1.0) -> None:
        """Mark a cast-shadow polygon (pixel coordinates) on the shadow layer."""
        if len(pts) >= 3:
            self._shadow_draw.polygon([(float(x), float(y)) for x, y in pts], fill=round(255 * strength))

    def index_map(self) -> np.ndarray:
        """Material index of every pixel, ``[H, W]`` int32."""
        return np.asarray(self._index, dtype=np.int32)

    def shadow_map(self) -> Image.Image:
        """The shadow layer (mode ``L``, 255 = full shadow)."""
        return self._shadow

    def table(self) -> MaterialTable:
        """Freeze the materials into arrays."""
        return MaterialTable(self.mats)
