"""Materials to colour: base colour x texture x gradient x lighting x cast shadows.

Each texture kind is computed only on the pixels that use it, from a few per-frame noise fields,
so a frame costs a fixed handful of vectorised passes however many shapes it has. Ground textures
(asphalt, paving tiles) live in ground coordinates so that they shrink with distance like real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from stvm_sdk.synthetic.render.camera import Camera
from stvm_sdk.synthetic.render.canvas import (
    ASPHALT,
    BRICKS,
    CLOUDS,
    GLASS,
    LEAVES,
    METAL,
    NOISE,
    TILES,
    MaterialTable,
)


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise ``[H, W]`` in about [-1, 1]: a random grid of ``cell``-pixel spacing, upsampled."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(grid, mode="F").resize(
        (round(gw * cell), round(gh * cell)), Image.Resampling.BICUBIC
    )
    return np.asarray(big, dtype=np.float32)[:h, :w] * 0.8


def cell_hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A repeatable pseudo-random value in [0, 1) per integer cell (per brick, per paving tile)."""
    v = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return (v - np.floor(v)).astype(np.float32)


@dataclass
class Fields:
    """Per-frame inputs shared by all texture kinds."""

    fine: np.ndarray
    mid: np.ndarray
    coarse: np.ndarray
    gz: np.ndarray
    gx: np.ndarray


def _local(t: MaterialTable, m: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel offsets from the material's box corner (u right, v up) and v normalised to [0, 1]."""
    box = t.box[m]
    u = xs - box[:, 0]
    v = box[:, 3] - ys
    return u, v, np.clip(v / (box[:, 3] - box[:, 1]), 0.0, 1.0)


def _texture(kind: int, t: MaterialTable, m: np.ndarray, ys: np.ndarray, xs: np.ndarray, f: Fields):
    """Relative brightness change of the pixels ``(ys, xs)`` whose materials ``m`` use ``kind``."""
    amp, s = t.amp[m], t.scale[m]
    if kind == NOISE:
        return amp * (0.6 * f.mid[ys, xs] + 0.5 * f.fine[ys, xs])
    if kind == LEAVES:
        return amp * (0.7 * np.tanh(3.0 * f.mid[ys, xs]) + 0.6 * f.fine[ys, xs])
    if kind == CLOUDS:
        return amp * np.clip(f.coarse[ys, xs] * 1.5 + 0.2, 0.0, 1.0)
    if kind in (ASPHALT, TILES):
        return _ground_texture(kind, amp, s, ys, xs, f)
    u, v, tv = _local(t, m, ys.astype(np.float32), xs.astype(np.float32))
    if kind == BRICKS:
        row = np.floor(v / s)
        col = np.floor(u / (2 * s) + 0.5 * (row % 2))
        mortar = (v / s - row < 0.18) | (u / (2 * s) + 0.5 * (row % 2) - col < 0.08)
        fade = np.clip((s - 1.5) / 2.0, 0.0, 1.0)  # bricks under ~2 px only alias: fade to noise
        brick = (cell_hash(row, col) - 0.5) * 0.8 + np.where(mortar, 0.5, 0.0)
        return amp * (fade * brick + 0.4 * f.fine[ys, xs])
    if kind == GLASS:
        streak = ((u + 0.7 * v) / (3 * s)) % 1.0 < 0.25
        return amp * (0.8 * tv - 0.4 + 0.5 * streak)
    if kind == METAL:
        return amp * (1.4 * np.exp(-(((tv - 0.75) / 0.1) ** 2)) - 0.3 + 0.2 * f.fine[ys, xs])
    return np.zeros_like(amp)


def _ground_texture(kind: int, amp, s, ys, xs, f: Fields):
    z = np.minimum(f.gz[ys, xs], 500.0)
    x = f.gx[ys, xs]
    near = np.clip(12.0 / z, 0.0, 1.0)  # fine grain is invisible far away (it would only alias)
    if kind == ASPHALT:
        patch = cell_hash(np.floor(x / 2.5), np.floor(z / 4.0))
        return amp * (0.9 * near * f.fine[ys, xs] + 0.4 * f.mid[ys, xs] - 0.5 * (patch > 0.8))
    fx, fz = x / s - np.floor(x / s), z / s - np.floor(z / s)
    tile = cell_hash(np.floor(x / s), np.floor(z / s)) - 0.5
    grout = ((fx < 0.07) | (fz < 0.07)) * np.clip(f.fine.shape[1] * s / (z * 40.0) - 0.5, 0.0, 1.0)
    return amp * (0.5 * tile - 0.8 * grout + 0.4 * near * f.fine[ys, xs])


def shade(
    index: np.ndarray,
    t: MaterialTable,
    cam: Camera,
    shadow: Image.Image,
    rng: np.random.Generator,
    shadow_strength: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render the index map: RGB ``[H, W, 3]`` in [0, 1], depth (m) ``[H, W]`` and emission ``[H, W]``."""
    h, w = index.shape
    gz = cam.ground_depth()
    f = Fields(
        fine=value_noise(rng, h, w, 1.0),
        mid=value_noise(rng, h, w, 4.0),
        coarse=value_noise(rng, h, w, 40.0),
        gz=gz,
        gx=cam.ground_x(gz),
    )
    mod = np.ones((h, w), dtype=np.float32)
    flat_mod, flat_index = mod.reshape(-1), index.reshape(-1)
    tex = t.tex[flat_index]
    for kind in np.flatnonzero(np.bincount(tex, minlength=CLOUDS + 1)[1:]) + 1:  # kinds in use, not FLAT
        idx = np.flatnonzero(tex == kind)
        ys, xs = np.divmod(idx, w)
        flat_mod[idx] += _texture(int(kind), t, flat_index[idx], ys, xs, f)
    idx = np.flatnonzero(t.grad[flat_index] != 0)
    ys, xs = np.divmod(idx, w)
    m = flat_index[idx]
    flat_mod[idx] += t.grad[m] * (_local(t, m, ys.astype(np.float32), xs.astype(np.float32))[2] - 0.5)
    light = t.light[index]
    if shadow_strength > 0:
        soft = np.asarray(shadow.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32) / 255.0
        light = light * (1.0 - shadow_strength * soft * t.ground[index])
    rgb = t.rgb[index] * (np.clip(mod, 0.05, 3.0) * light)[..., None]
    depth = t.depth[index]
    depth = np.where(depth == 0, gz, depth)
    return np.clip(rgb, 0.0, 1.0), depth, t.emit[index]
