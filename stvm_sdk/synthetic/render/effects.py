"""Weather, night and the camera: what happens to the light between the scene and the PNG.

Order follows the physics: fog scatters along the ray (needs depth), night lowers ambient light while
lamps keep shining (needs emission), then the camera: colour response, vignetting, optical blur,
sensor noise and finally JPEG-like compression.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from stvm_sdk.synthetic.render.styles import Sensor


def fog(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Koschmieder's model: ``I = J t + A (1 - t)`` with transmission ``t = exp(-beta * depth)``."""
    beta = rng.uniform(0.02, 0.06)  # visibility 3 / beta: 50..150 m
    airlight = rng.uniform(0.72, 0.88) * np.array([0.98, 1.0, 1.03], dtype=np.float32)
    t = np.exp(-beta * np.minimum(depth, 1e4))[..., None].astype(np.float32)
    return rgb * t + airlight * (1.0 - t)


def night(rgb: np.ndarray, emit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dim, bluish ambient light; lamps, lit windows and vehicle lights keep glowing (with bloom)."""
    ambient = rng.uniform(0.07, 0.15) * np.array([0.8, 0.9, 1.15], dtype=np.float32)
    lit = rgb * ambient
    glow = rgb * emit[..., None]
    if emit.any():
        bloom = Image.fromarray(np.clip(glow * 255, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(3.0 * rgb.shape[1] / 512)
        )
        lit = lit + glow * 0.8 + np.asarray(bloom, dtype=np.float32) / 255.0 * 1.5
    return lit * rng.uniform(1.6, 2.6)  # auto exposure brings the frame back up (and the noise with it)


def camera(rgb: np.ndarray, sensor: Sensor, rng: np.random.Generator) -> np.ndarray:
    """Colour response, vignetting, blur, noise and compression; float [0, 1] in, uint8 out."""
    h, w, _ = rgb.shape
    sat, gains = rng.uniform(*sensor.saturation), 1.0 + sensor.gains * rng.standard_normal(3)
    if sat != 1.0:
        grey = rgb.mean(axis=2, keepdims=True)
        rgb = grey + sat * (rgb - grey)
    if sensor.vignette[1] > 0:
        xx = ((np.arange(w, dtype=np.float32) - w / 2) / (w / 2)) ** 2
        yy = ((np.arange(h, dtype=np.float32) - h / 2) / (h / 2)) ** 2
        rgb = rgb * (1.0 - rng.uniform(*sensor.vignette) * (0.6 * xx[None, :] + 0.4 * yy[:, None]))[..., None]
    img = Image.fromarray(np.clip(rgb * (gains * 255.0).astype(np.float32) + 0.5, 0, 255).astype(np.uint8))
    gamma = rng.uniform(*sensor.gamma)
    if gamma != 1.0:  # tone curve as an 8-bit lookup table: far cheaper than a float power
        img = img.point((255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8).tolist() * 3)
    if sensor.blur[1] > 0:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*sensor.blur) * w / 512))
    if sensor.noise[1] > 0:  # read noise plus shot noise that grows with the signal
        out = np.asarray(img)
        level = np.sqrt(np.arange(256, dtype=np.float32) / 255.0)
        sigma = rng.uniform(*sensor.noise) * 255.0 * (0.6 + 0.4 * level)  # per 8-bit value
        noisy = out + sigma[out] * rng.standard_normal(out.shape, dtype=np.float32)
        img = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    if sensor.jpeg[1] > 0:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(sensor.jpeg[0], sensor.jpeg[1] + 1)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(img, dtype=np.uint8)
