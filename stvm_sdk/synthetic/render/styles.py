"""What makes a domain: layout priors, per-class looks, object shapes, lighting and the sensor.

``source`` is a clean game-like render: flat shading, a saturated palette in which colour alone
almost identifies the class, boxy objects, a high camera over wide streets. ``target`` differs the
way camera footage differs from a game engine, and deliberately *per class*: materials and textures
(asphalt, paving, bricks, glass, foliage), a realistic palette in which classes overlap differently
(grey sidewalks like the road, glass reflecting the sky, grey cars), other silhouettes and sizes,
a lower camera over narrower, denser streets with parked cars and clutter, sun and cast shadows,
then blur, noise, vignetting and JPEG. Such shifts cannot be undone by re-estimating normalisation
statistics (a global, per-channel correction), while the geometry (where road, sidewalk and
facades are; how objects stand on the ground) stays consistent, so self-training has cues to use.
``fog`` and ``night`` are ``target`` scenes under adverse conditions.

The severity ladder sits between the two: :func:`blend_styles` moves every numeric setting of
``source`` part of the way to ``target`` (colours, texture strengths, layout ranges, object sizes,
sensor effects) and switches each categorical one (texture kind, silhouettes, facade detail, the ego
hood) half way. ``mild`` and ``moderate`` are two points on it, chosen by measurement so that a model
trained on ``source`` keeps >= 0.75 and 0.5-0.65 of the mIoU of one trained on the domain itself
(docs/method.md, "The benchmark's severity ladder").
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from stvm_sdk.synthetic.render.canvas import ASPHALT, BRICKS, CLOUDS, FLAT, GLASS, LEAVES, METAL, NOISE, TILES

RGB = tuple[int, int, int]
Range = tuple[float, float]


@dataclass(frozen=True)
class Look:
    """How one kind of surface looks: candidate colours and a texture (``scale`` in metres)."""

    colours: tuple[RGB, ...]
    tex: int = FLAT
    amp: float = 0.0
    scale: float = 0.3
    jitter: float = 0.04
    grad: float = 0.0


@dataclass(frozen=True)
class Layout:
    """Scene priors: camera, street cross-section, buildings, and how many objects of each kind."""

    cam_height: Range
    horizon: Range  # horizon row as a fraction of the image height
    focal: Range  # focal length as a multiple of the image width
    yaw: Range  # vanishing-point shift as a fraction of the width
    lanes: tuple[int, int]
    lane_width: Range
    sidewalk: Range
    terrain_prob: float
    building_height: Range
    building_length: Range
    gap_prob: float
    pole_spacing: Range
    tree_prob: float
    tree_spacing: Range
    moving_cars: float  # Poisson means
    parked_prob: float
    people: float
    riders: float
    parked_bikes: float
    truck_prob: float
    bus_prob: float
    train_prob: float
    clutter: float
    barrier_prob: float  # walls/fences along the sidewalk's outer edge
    ego_hood: bool


@dataclass(frozen=True)
class Shapes:
    """Object silhouettes and sizes."""

    car: str  # "box" (body + cabin boxes) or "rounded" (tapered cabin, glass, lights)
    car_size: tuple[Range, Range, Range]  # width, length, height (m)
    tree: str  # "ball" (one round crown) or "clumps" (irregular crown of many blobs)
    person: str  # "blocky" or "slim"
    person_height: Range
    fence: str  # "solid" panels or "bars"
    facade: str  # "plain" (flat windows) or "detailed" (storefronts, frames, balconies)


@dataclass(frozen=True)
class Sensor:
    """Lighting and camera pipeline applied after shading (effects.py)."""

    shadows: float = 0.0  # strength of cast shadows, 0 = none
    face_contrast: float = 0.0  # lit vs shaded facade brightness difference
    saturation: Range = (1.0, 1.0)
    gains: float = 0.0  # per-channel white-balance jitter
    gamma: Range = (1.0, 1.0)
    blur: Range = (0.0, 0.0)  # Gaussian sigma, pixels at 512 px width
    noise: Range = (0.0, 0.0)
    vignette: Range = (0.0, 0.0)
    jpeg: tuple[int, int] = (0, 0)  # quality range; 0 = no compression
    condition: str = "clear"  # "clear", "fog" or "night"


@dataclass(frozen=True)
class Style:
    """Everything that defines a domain."""

    name: str
    city: str
    layout: Layout
    shapes: Shapes
    sensor: Sensor
    looks: dict[str, Look] = field(default_factory=dict)


# fmt: off
_SOURCE_LOOKS = {
    "road": Look(((82, 80, 96), (92, 88, 104)), NOISE, 0.06),
    "marking": Look(((245, 245, 245), (250, 220, 40))),
    "sidewalk": Look(((214, 160, 150), (205, 176, 140), (190, 150, 175)), TILES, 0.2, 0.6),
    "terrain": Look(((170, 205, 80), (150, 200, 100)), NOISE, 0.15),
    "building": Look(((232, 182, 90), (120, 170, 222), (222, 122, 100), (170, 202, 120), (196, 150, 214),
                      (176, 176, 184))),
    "window": Look(((50, 80, 130), (40, 60, 100))),
    "door": Look(((110, 60, 30),)),
    "wall": Look(((196, 186, 120), (210, 170, 110))),
    "fence": Look(((176, 120, 60), (150, 100, 50))),
    "pole": Look(((120, 120, 132),)),
    "light_box": Look(((40, 40, 40),)),
    "sign": Look(((30, 90, 225), (225, 40, 40), (250, 210, 0))),
    "vegetation": Look(((60, 175, 50), (85, 195, 60), (50, 130, 45)), LEAVES, 0.25),
    "trunk": Look(((125, 80, 40),)),
    "sky": Look(((80, 150, 240), (170, 210, 252))),  # (zenith, horizon) pairs
    "skin": Look(((235, 185, 140), (200, 150, 110))),
    "clothes": Look(((225, 40, 40), (40, 80, 225), (245, 205, 40), (40, 175, 80), (235, 120, 30),
                     (45, 45, 55))),
    # Saturated paint, but also neutral cars: colour alone must not identify a car even in source.
    "car": Look(((225, 30, 30), (30, 70, 225), (245, 205, 20), (30, 165, 70), (235, 110, 20), (240, 240, 240),
                 (35, 35, 40), (160, 160, 170), (100, 100, 110)), grad=0.25),
    "car_glass": Look(((40, 50, 70),)),
    "tyre": Look(((25, 25, 25),)),
    "truck": Look(((235, 125, 30), (210, 210, 210), (60, 125, 60))),
    "bus": Look(((245, 205, 30), (205, 40, 40))),
    "train": Look(((205, 60, 60), (60, 120, 205))),
    "motorcycle": Look(((225, 60, 30), (30, 30, 30))),
    "bicycle": Look(((40, 175, 205), (235, 60, 150))),
    "clutter": Look(((90, 150, 90), (200, 200, 60))),
    "rail": Look(((120, 100, 90),)),
    "ego": Look(((20, 20, 25),)),
}

_TARGET_LOOKS = {
    "road": Look(((72, 70, 68), (86, 83, 80), (62, 62, 64)), ASPHALT, 0.3),
    "marking": Look(((200, 200, 196), (190, 170, 90)), ASPHALT, 0.3),
    # Paving a little lighter than asphalt, but far closer to it than source's pink sidewalks.
    "sidewalk": Look(((134, 128, 120), (146, 136, 124), (118, 116, 114)), TILES, 0.35, 0.45),
    "terrain": Look(((96, 100, 58), (112, 96, 70), (84, 92, 60)), LEAVES, 0.45),
    "building": Look(((150, 140, 130), (128, 84, 68), (178, 172, 162), (100, 100, 106), (142, 120, 98)),
                     BRICKS, 0.25, 0.18),
    "window": Look(((150, 172, 196), (120, 140, 160), (60, 66, 72)), GLASS, 0.5, 0.4),  # reflects the sky
    "door": Look(((60, 50, 44), (90, 94, 98)), NOISE, 0.2),
    "wall": Look(((132, 130, 126), (150, 140, 124)), NOISE, 0.3),
    "fence": Look(((70, 76, 70), (96, 90, 80)), NOISE, 0.2),
    "pole": Look(((62, 64, 66), (42, 60, 46), (150, 150, 146)), METAL, 0.3),
    "light_box": Look(((28, 30, 30), (200, 170, 40)), NOISE, 0.15),
    "sign": Look(((40, 82, 160), (180, 42, 40), (222, 222, 222)), NOISE, 0.15),
    "vegetation": Look(((58, 88, 38), (44, 70, 32), (80, 98, 46)), LEAVES, 0.5),
    "trunk": Look(((64, 54, 44),), NOISE, 0.3),
    "sky": Look(((176, 186, 198), (214, 218, 224), (120, 156, 204), (196, 212, 230)), CLOUDS, 0.25),
    "skin": Look(((220, 170, 140), (150, 106, 80), (96, 66, 50)), NOISE, 0.1),
    "clothes": Look(((40, 40, 46), (72, 62, 52), (32, 42, 72), (122, 122, 128), (102, 42, 40), (150, 40, 40),
                     (40, 70, 140)), NOISE, 0.25),
    # Mostly white, black, grey and silver, as on real streets; a third in colour.
    "car": Look(((202, 202, 206), (32, 32, 34), (122, 124, 128), (162, 162, 168), (62, 66, 82), (112, 30, 32),
                 (160, 32, 30), (40, 70, 140), (200, 170, 40)), METAL, 0.35),
    "car_glass": Look(((70, 82, 96), (40, 46, 52)), GLASS, 0.5, 0.2),
    "tyre": Look(((22, 22, 22),), NOISE, 0.2),
    "truck": Look(((212, 212, 212), (92, 92, 98), (150, 40, 36)), METAL, 0.3),
    "bus": Look(((202, 202, 192), (42, 92, 152), (200, 170, 40)), METAL, 0.3),
    "train": Look(((222, 222, 222), (62, 102, 62)), METAL, 0.3),
    "motorcycle": Look(((40, 40, 40), (92, 92, 92), (140, 30, 30)), METAL, 0.4),
    "bicycle": Look(((40, 40, 40), (92, 92, 92)), NOISE, 0.2),
    "clutter": Look(((60, 90, 60), (150, 150, 150), (120, 60, 40), (200, 200, 190)), NOISE, 0.3),
    "rail": Look(((96, 90, 86),), NOISE, 0.3),
    "ego": Look(((18, 18, 22),), METAL, 0.3),
}
# fmt: on

SOURCE = Style(
    name="source",
    city="synthsource",
    layout=Layout(
        cam_height=(1.5, 1.9), horizon=(0.44, 0.50), focal=(0.95, 1.05), yaw=(-0.04, 0.04), lanes=(2, 3),
        lane_width=(3.4, 3.8), sidewalk=(3.0, 5.0), terrain_prob=0.3, building_height=(10, 30),
        building_length=(15, 40), gap_prob=0.15, pole_spacing=(20, 30), tree_prob=0.5, tree_spacing=(12, 20),
        moving_cars=4.0, parked_prob=0.2, people=4.0, riders=1.0, parked_bikes=0.5, truck_prob=0.35,
        bus_prob=0.25, train_prob=0.12, clutter=0.0, barrier_prob=0.35, ego_hood=False,
    ),
    shapes=Shapes(
        car="box", car_size=((1.85, 2.0), (4.3, 4.8), (1.55, 1.7)), tree="ball", person="blocky",
        person_height=(1.75, 1.85), fence="solid", facade="plain",
    ),
    sensor=Sensor(),
    looks=_SOURCE_LOOKS,
)  # fmt: skip

TARGET = Style(
    name="target",
    city="synthtarget",
    layout=Layout(
        cam_height=(1.15, 1.45), horizon=(0.36, 0.46), focal=(1.05, 1.25), yaw=(-0.12, 0.12), lanes=(1, 2),
        lane_width=(2.9, 3.3), sidewalk=(2.0, 4.0), terrain_prob=0.5, building_height=(6, 20),
        building_length=(6, 18), gap_prob=0.3, pole_spacing=(10, 16), tree_prob=0.7, tree_spacing=(7, 11),
        moving_cars=3.0, parked_prob=0.8, people=10.0, riders=2.0, parked_bikes=2.0, truck_prob=0.3,
        bus_prob=0.3, train_prob=0.15, clutter=8.0, barrier_prob=0.5, ego_hood=True,
    ),
    shapes=Shapes(
        car="rounded", car_size=((1.7, 1.85), (3.9, 4.6), (1.4, 1.55)), tree="clumps", person="slim",
        person_height=(1.5, 1.95), fence="bars", facade="detailed",
    ),
    sensor=Sensor(
        shadows=0.55, face_contrast=0.35, saturation=(0.55, 0.85), gains=0.08, gamma=(0.85, 1.15),
        blur=(0.5, 1.1), noise=(0.01, 0.03), vignette=(0.2, 0.45), jpeg=(35, 75),
    ),
    looks=_TARGET_LOOKS,
)  # fmt: skip

FOG = replace(
    TARGET,
    name="fog",
    city="synthfog",
    sensor=replace(TARGET.sensor, shadows=0.0, face_contrast=0.1, condition="fog"),
)
NIGHT = replace(
    TARGET,
    name="night",
    city="synthnight",
    sensor=replace(TARGET.sensor, shadows=0.0, face_contrast=0.0, noise=(0.03, 0.06), condition="night"),
)


def _lerp(a: Any, b: Any, t: float) -> Any:
    """``a`` moved the share ``t`` of the way to ``b``: numbers and tuples of them elementwise (ints stay
    ints), anything else (strings, booleans, texture kinds) switches to ``b`` at ``t >= 0.5``."""
    if isinstance(a, bool) or not isinstance(a, int | float | tuple):
        return b if t >= 0.5 else a
    if isinstance(a, tuple):
        return tuple(_lerp(x, y, t) for x, y in zip(a, b, strict=True))
    value = (1.0 - t) * a + t * b  # exact at both ends
    return round(value) if isinstance(a, int) and isinstance(b, int) else value


def _blend_look(a: Look, b: Look, t: float) -> Look:
    # Palettes differ in length: colour i goes from a's i-th (cyclically) to b's i-th, and the palette
    # has the nearer end's length, so t = 0 and t = 1 give a's and b's palettes exactly. Even lengths
    # keep the sky's (zenith, horizon) pairs together.
    n = len(a.colours) if t < 0.5 else len(b.colours)
    colours = tuple(_lerp(a.colours[i % len(a.colours)], b.colours[i % len(b.colours)], t) for i in range(n))
    return replace(_blend(a, b, t), colours=colours)


def _blend(a: Any, b: Any, t: float) -> Any:
    """A dataclass whose fields are each ``_lerp``-ed (``colours`` handled by ``_blend_look``)."""
    return replace(a, **{f.name: _lerp(getattr(a, f.name), getattr(b, f.name), t) for f in fields(a)
                         if f.name != "colours"})  # fmt: skip


def _no_jpeg_as_best_quality(sensor: Sensor) -> Sensor:
    return replace(sensor, jpeg=(100, 100)) if sensor.jpeg[1] == 0 else sensor


def blend_styles(a: Style, b: Style, t: float, name: str, city: str) -> Style:
    """The style ``t`` of the way from ``a`` to ``b`` (0 <= t <= 1): every numeric setting interpolated,
    every categorical one switched at ``t = 0.5``; each look's palette blended colour by colour."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"severity t must be in [0, 1], got {t}")
    sensor = _blend(_no_jpeg_as_best_quality(a.sensor), _no_jpeg_as_best_quality(b.sensor), t)
    if sensor.jpeg[0] >= 100:  # quality 100 at both ends of the range: no compression, as in `a`
        sensor = replace(sensor, jpeg=(0, 0))
    return Style(
        name=name,
        city=city,
        layout=_blend(a.layout, b.layout, t),
        shapes=_blend(a.shapes, b.shapes, t),
        sensor=sensor,
        looks={k: _blend_look(a.looks[k], b.looks[k], t) for k in a.looks},
    )


# The ladder's points between source and target (measured: docs/method.md, "severity ladder").
SEVERITY = {"mild": 0.25, "moderate": 0.45}
MILD = blend_styles(SOURCE, TARGET, SEVERITY["mild"], "mild", "synthmild")
MODERATE = blend_styles(SOURCE, TARGET, SEVERITY["moderate"], "moderate", "synthmoderate")

STYLES: dict[str, Style] = {s.name: s for s in (SOURCE, TARGET, FOG, NIGHT, MILD, MODERATE)}
