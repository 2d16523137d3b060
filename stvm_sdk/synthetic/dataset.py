"""Synthetic driving-scene benchmark: procedural street scenes in several domains, Cityscapes layout.

``source`` looks like a game engine render, ``target`` like camera footage of differently built
streets, ``fog`` and ``night`` are ``target`` under adverse conditions (see ``synth/styles.py`` for
what exactly differs and why). Labels are exact: image and label are painted from the same shapes.

Frames are written as Cityscapes does, so the usual loaders and the official evaluator work as is::

    OUT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    OUT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    OUT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

with ``city`` = ``synth<domain>``. Every frame has its own generator seeded from
``(seed, domain, split, index)``, so a frame does not depend on how many others are made, in which
order or by how many worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from stvm_sdk.boundary.args import check_choice
from stvm_sdk.boundary.outputs import claim_dir, write_json_atomic
from stvm_sdk.errors import ConfigError
from stvm_sdk.synthetic.render import effects
from stvm_sdk.synthetic.render.labels import (
    IGNORE,
    LABEL_TO_TRAIN,
    TRAIN_CLASSES,
    TRAIN_TO_LABEL,
    to_train_ids,
)
from stvm_sdk.synthetic.render.scene import build_scene
from stvm_sdk.synthetic.render.shading import shade
from stvm_sdk.synthetic.render.styles import STYLES, Style

__all__ = [
    "DOMAINS", "GENERATOR_VERSION", "SPLITS", "IGNORE", "LABEL_TO_TRAIN", "TRAIN_CLASSES", "TRAIN_TO_LABEL",
    "city_name", "frame_rng", "frame_stem", "generate", "iter_frames", "render_frame", "render_scene",
]  # fmt: skip

# Bumped whenever the same (seed, domain, split, index) would render a different frame: caches of
# generated data should include it in their key.
GENERATOR_VERSION = "2"
DOMAINS = tuple(STYLES)
SPLITS = ("train", "val", "test")


def _check(domain: str, size: tuple[int, int], split: str = "train") -> None:
    check_choice(domain, DOMAINS, "domain")
    check_choice(split, SPLITS, "split")
    if len(size) != 2 or min(size) < 16:
        raise ConfigError(f"size must be (height, width) with both >= 16 pixels, got {size!r}")


def city_name(domain: str) -> str:
    """The Cityscapes "city" folder of a domain, e.g. ``synthtarget``."""
    _check(domain, (16, 16))
    return STYLES[domain].city


def frame_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of one frame: independent streams per (seed, domain, split, index)."""
    key = [seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def frame_stem(domain: str, index: int) -> str:
    """Cityscapes-style frame name ``<city>_<seq:06d>_<frame:06d>``."""
    return f"{city_name(domain)}_{index // 1000:06d}_{index % 1000:06d}"


def render_frame(domain: str | Style, rng: np.random.Generator, size: tuple[int, int] = (256, 512)):
    """Render one frame: image ``[H, W, 3]`` uint8 and Cityscapes labelIds ``[H, W]`` uint8.

    ``domain`` names a domain, or is a :class:`Style` of one's own (e.g. a point of
    :func:`~stvm_sdk.synthetic.render.styles.blend_styles` between two domains)."""
    if isinstance(domain, Style):
        _check("source", size)
        style = domain
    else:
        _check(domain, size)
        style = STYLES[domain]
    canvas, cam = build_scene(style, rng, size)
    index, table = canvas.index_map(), canvas.table()
    rgb, depth, emit = shade(index, table, cam, canvas.shadow_map(), rng, style.sensor.shadows)
    if style.sensor.condition == "fog":
        rgb = effects.fog(rgb, depth, rng)
    elif style.sensor.condition == "night":
        rgb = effects.night(rgb, emit, rng)
    return effects.camera(rgb, style.sensor, rng), table.label[index]


def render_scene(
    domain: str | Style, rng: np.random.Generator, size: tuple[int, int] = (256, 512)
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: image ``[H, W, 3]`` uint8 and trainIds ``[H, W]`` uint8 (0..18, 255 = ignore)."""
    image, label_ids = render_frame(domain, rng, size)
    return image, to_train_ids(label_ids)


def iter_frames(
    domain: str, n: int, *, seed: int = 0, size: tuple[int, int] = (256, 512), split: str = "train"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames ``0..n-1`` of a domain in memory (the same ones :func:`generate` writes)."""
    for i in range(n):
        yield render_scene(domain, frame_rng(seed, domain, split, i), size)


def _write_frame(job: tuple[Path, str, int, int, tuple[int, int], str]) -> None:
    out, domain, seed, index, size, split = job
    image, label_ids = render_frame(domain, frame_rng(seed, domain, split, index), size)
    city, stem = city_name(domain), frame_stem(domain, index)
    img_dir, gt_dir = out / "leftImg8bit" / split / city, out / "gtFine" / split / city
    # Fast zlib level for the noisy RGB image (size barely changes); labels compress well anyway.
    Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png", compress_level=1)
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png", compress_level=3)
    Image.fromarray(to_train_ids(label_ids)).save(
        gt_dir / f"{stem}_gtFine_labelTrainIds.png", compress_level=3
    )


def generate(
    out_dir: str | Path,
    domain: str,
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (256, 512),
    split: str = "train",
    workers: int | None = None,
) -> Path:
    """Write ``n`` frames of ``domain`` under ``out_dir`` in Cityscapes layout; returns ``out_dir``.

    Args:
        out_dir: dataset root; ``leftImg8bit/`` and ``gtFine/`` are created inside.
        domain: ``source``, ``target``, ``fog`` or ``night``.
        n: number of frames (named ``<city>_000000_000000`` onwards).
        seed: base seed; with ``split`` and the frame index it determines each frame.
        size: ``(height, width)`` in pixels.
        split: ``train``, ``val`` or ``test`` (different seeds, so splits never share frames).
        workers: processes to render with; default: all cores (inline for small ``n``).
    """
    _check(domain, size, split)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    out = claim_dir(out_dir, "synth")  # new, empty, or an earlier `stvm synth` output: never a user's folder
    city = city_name(domain)
    for sub in ("leftImg8bit", "gtFine"):
        (out / sub / split / city).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(out, domain, seed, i, tuple(size), split) for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or n < 8:
        for job in jobs:
            _write_frame(job)  # type: ignore[arg-type]
    else:
        # "spawn": the caller may have started torch's thread pools, which do not survive a fork.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_write_frame, jobs, chunksize=max(1, n // (4 * workers))))
    meta = {
        "generator_version": GENERATOR_VERSION,
        "domain": domain,
        "city": city,
        "split": split,
        "n": n,
        "seed": seed,
        "size": list(size),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(meta, out / f"synth_{domain}_{split}.json")
    return out
