"""One frame's scene: sample the street, place objects, paint everything back to front."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from stvm_sdk.synthetic.render import furniture, people, vehicles
from stvm_sdk.synthetic.render.camera import Camera
from stvm_sdk.synthetic.render.canvas import Canvas, Material
from stvm_sdk.synthetic.render.labels import EGO_VEHICLE, SKY
from stvm_sdk.synthetic.render.paint import Ctx
from stvm_sdk.synthetic.render.street import Street, draw_buildings, draw_sky_and_ground, sample_street
from stvm_sdk.synthetic.render.styles import Style

Item = tuple[float, Callable[[], object]]  # (near depth, drawing call)
RESERVE = {"car": 5.0, "truck": 9.5, "bus": 13.0, "train": 31.0}  # lane length kept free per vehicle


def build_scene(style: Style, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Canvas, Camera]:
    """Paint a full scene for ``style`` into a canvas; returns it with its camera."""
    h, w = size
    lay = style.layout
    cam = Camera(
        h=h,
        w=w,
        f=rng.uniform(*lay.focal) * w,
        cx=w * (0.5 + rng.uniform(*lay.yaw)),
        horizon=h * rng.uniform(*lay.horizon),
        height=rng.uniform(*lay.cam_height),
    )
    canvas = Canvas(h, w, Material(SKY, (0.6, 0.75, 0.9), depth=np.inf))
    ctx = Ctx(cam, canvas, style, rng)
    # Sun low enough to cast long shadows, from the left or the right. Drawn even when unused, so
    # that fog and night render exactly the target scene a given generator state describes.
    k, ang, side = rng.uniform(0.4, 1.5), rng.uniform(0.3, 1.2), 1 if ctx.random() < 0.5 else -1
    if style.sensor.shadows > 0:
        ctx.sun_dx, ctx.sun_dz = side * k * np.cos(ang), k * np.sin(ang)
    st = sample_street(ctx, (ctx.random() < lay.parked_prob, ctx.random() < lay.parked_prob))
    draw_sky_and_ground(ctx, st)
    draw_buildings(ctx, st)
    _barriers(ctx, st)
    for _, draw in sorted(_objects(ctx, st), key=lambda item: -item[0]):
        draw()
    if lay.ego_hood:
        _ego_hood(ctx)
    return canvas, cam


def _barriers(ctx: Ctx, st: Street) -> None:
    """Walls, fences and hedges on the outer edge of the sidewalks (behind everything on them)."""
    for side in (-1, 1):
        if ctx.random() >= ctx.style.layout.barrier_prob:
            continue
        x = st.edge(side) + side * st.sidewalk[(side + 1) // 2]
        z0 = ctx.u(1.0, 30.0)
        z1 = z0 + ctx.u(8.0, 50.0)
        if st.crossing and st.crosses(z0, z1):  # stop at the side street
            z0, z1 = (
                (z0, st.crossing[0]) if z0 < st.crossing[0] else (st.crossing[1], max(z1, st.crossing[1] + 5))
            )
        kind = ("wall", "fence", "hedge")[ctx.pick(3)]
        furniture.barrier(ctx, x, z0, z1, kind)


class _Lanes:
    """Which stretches of which lane are taken, so vehicles never overlap."""

    def __init__(self) -> None:
        self.taken: dict[int, list[tuple[float, float]]] = {}

    def take(self, lanes: list[int], z0: float, z1: float) -> bool:
        for k in lanes:
            if any(z0 < b and a < z1 for a, b in self.taken.get(k, [])):
                return False
        for k in lanes:
            self.taken.setdefault(k, []).append((z0, z1))
        return True


def _vehicles(ctx: Ctx, st: Street) -> list[Item]:
    lay, rng, lanes = ctx.style.layout, ctx.rng, _Lanes()
    items: list[Item] = []
    if st.tram:
        z0 = ctx.u(12.0, 60.0)
        lanes.take([-1, 0], z0, z0 + RESERVE["train"])
        items.append((z0, partial(vehicles.big_vehicle, ctx, "train", st.centre, z0)))
    kinds = ["car"] * int(rng.poisson(lay.moving_cars))
    kinds += ["truck"] * int(ctx.random() < lay.truck_prob) + ["bus"] * int(ctx.random() < lay.bus_prob)
    for kind in kinds:
        for _ in range(6):  # a few tries to find a free stretch of some lane
            k = ctx.pick(2 * st.lanes) - st.lanes
            z0 = (7.0 if k >= 0 else 4.0) + ctx.exponential(25.0)
            if k >= 0 and abs(st.lane_x(k)) < 1.0:
                z0 += 4.0  # keep a gap in front of the ego vehicle
            if z0 < 150 and lanes.take([k], z0, z0 + RESERVE[kind]):
                x = st.lane_x(k) + ctx.u(-0.3, 0.3)
                draw = (
                    partial(vehicles.car, ctx, x, z0, k < 0)
                    if kind == "car"
                    else partial(vehicles.big_vehicle, ctx, kind, x, z0)
                )
                items.append((z0, draw))
                break
    for side in (-1, 1):
        if st.park[(side + 1) // 2] > 0:
            z = ctx.u(1.5, 6.0)
            while z < 90.0:
                if ctx.random() > 0.15 and not st.crosses(z - 1.0, z + RESERVE["car"]):
                    items.append((z, partial(vehicles.car, ctx, st.edge(side) - side * 1.15, z)))
                z += RESERVE["car"] + ctx.u(0.3, 3.0)
    return items


def _objects(ctx: Ctx, st: Street) -> list[Item]:
    """Everything that stands on the street, with the depth it is sorted by."""
    lay, rng = ctx.style.layout, ctx.rng
    items = _vehicles(ctx, st)

    def on_walk(side: int, lo: float = 0.3) -> float:
        return st.edge(side) + side * ctx.u(lo, max(lo + 0.1, st.sidewalk[(side + 1) // 2] - 0.3))

    def z_near() -> float:
        return 3.5 + min(ctx.exponential(16.0), 80.0)

    sides = lambda: -1 if ctx.random() < 0.5 else 1  # noqa: E731
    for _ in range(int(rng.poisson(lay.people))):
        if st.crossing and ctx.random() < 0.15:
            x, z = ctx.u(st.edge(-1), st.edge(1)), st.crossing[0] - ctx.u(1.5, 3.5)
        else:
            x, z = on_walk(sides()), z_near()
        items.append((z, partial(people.person, ctx, x, z)))
    for _ in range(int(rng.poisson(lay.riders))):
        side = 1 if ctx.random() < 0.75 else -1
        x, z = st.edge(side) - side * (st.park[(side + 1) // 2] + 0.8), 5.0 + z_near()
        items.append((z, partial(people.rider, ctx, x, z, bool(ctx.random() < 0.4))))
    for _ in range(int(rng.poisson(lay.parked_bikes))):
        z = z_near()
        items.append((z, partial(people.bike, ctx, on_walk(sides(), 0.2), z, bool(ctx.random() < 0.4), True)))
    for _ in range(int(rng.poisson(lay.clutter))):
        z = z_near()
        items.append((z, partial(furniture.clutter, ctx, on_walk(sides()), z)))
    for side in (-1, 1):
        items += _side_furniture(ctx, st, side)
    return items


def _side_furniture(ctx: Ctx, st: Street, side: int) -> list[Item]:
    """Poles along the kerb and, on some streets, a row of trees in the sidewalk."""
    lay = ctx.style.layout
    items: list[Item] = []
    z = ctx.u(2.0, lay.pole_spacing[1])
    while z < 120.0:
        kind = ("lamp", "sign", "light")[ctx.pick(3, [0.5, 0.35, 0.15])]
        if st.crossing and st.crosses(z - 6.0, z + 0.5):  # traffic lights at the corner instead
            z, kind = st.crossing[0] - 0.8, "light"
        items.append((z, partial(furniture.pole, ctx, st.edge(side) + side * 0.45, z, kind)))
        z = max(z, st.crossing[1] + 0.8) if st.crossing and z == st.crossing[0] - 0.8 else z
        z += ctx.u(*lay.pole_spacing)
    if ctx.random() < lay.tree_prob:
        x = st.edge(side) + side * 0.65 * st.sidewalk[(side + 1) // 2]
        z = ctx.u(2.0, lay.tree_spacing[1])
        while z < 100.0:
            if not st.crosses(z - 1.5, z + 1.5):
                items.append((z, partial(furniture.tree, ctx, x, z)))
            z += ctx.u(*lay.tree_spacing)
    return items


def _ego_hood(ctx: Ctx) -> None:
    """The bonnet of the recording car along the bottom edge (labelled ego vehicle, ignored)."""
    cam = ctx.cam
    hood = ctx.u(0.05, 0.1) * cam.h
    xs = np.linspace(0.0, cam.w, 24)
    ys = cam.h - hood * np.clip(1.0 - ((xs - cam.cx) / (0.9 * cam.w)) ** 2, 0.0, 1.0)
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)] + [
        (cam.w, cam.h + 1.0),
        (0.0, cam.h + 1.0),
    ]
    ctx.canvas.polygon(pts, ctx.mat("ego", EGO_VEHICLE, 1.0))
