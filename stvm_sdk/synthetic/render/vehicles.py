"""Cars, trucks, buses and trams as (tapered) boxes in 3D, seen through the scene camera.

Every part of a vehicle (glass, tyres, lights, plate) carries the vehicle's label, as in Cityscapes.
Source vehicles are flat-coloured stacked boxes; target cars have a tapered cabin with glass, sloped
windows, a bumper and lights, and metallic paint in a realistic (mostly grey) palette.
"""

from __future__ import annotations

from stvm_sdk.synthetic.render.labels import BUS, CAR, TRAIN, TRUCK
from stvm_sdk.synthetic.render.paint import Ctx

# width, length, height ranges (m) of the large vehicles; cars take theirs from the style.
DIMS = {
    "truck": ((2.3, 2.55), (6.5, 9.0), (3.0, 3.6)),
    "bus": ((2.45, 2.55), (10.0, 12.5), (3.0, 3.3)),
    "train": ((2.4, 2.65), (18.0, 30.0), (3.3, 3.7)),
}
RED, WHITE, PLATE = (0.85, 0.08, 0.06), (0.95, 0.93, 0.8), (0.88, 0.88, 0.84)


def _wheels(
    ctx: Ctx, x0: float, x1: float, z0: float, z1: float, r: float, label: int, n_side: int = 2
) -> None:
    """Tyres: the rear pair under the body and, if a side is visible, the side wheels as ellipses."""
    tyre = ctx.mat("tyre", label, z0)
    zr = z0 + 0.6
    for xa, xb in ((x0 + 0.03, x0 + 0.3), (x1 - 0.3, x1 - 0.03)):
        ctx.quad([(xa, 0.0, zr), (xb, 0.0, zr), (xb, 2 * r, zr), (xa, 2 * r, zr)], tyre)
    side = x0 if x0 > 0.3 else (x1 if x1 < -0.3 else None)
    if side is None:
        return
    length = z1 - z0
    for k in range(n_side):
        zc = z0 + length * (0.17 + 0.66 * k / max(n_side - 1, 1))
        ua, va = ctx.cam.project(side, r, zc - r)
        ub, _ = ctx.cam.project(side, r, zc + r)
        uc, vc = ctx.cam.project(side, r, zc)
        ctx.canvas.ellipse(uc, vc, abs(ub - ua) / 2, r * ctx.cam.scale(zc), tyre)


def car(ctx: Ctx, xc: float, z0: float, oncoming: bool = False) -> float:
    """Draw a car whose near end is at depth ``z0``; returns its far end."""
    sh = ctx.style.shapes
    w, length, h = (ctx.u(*r) for r in sh.car_size)
    x0, x1, z1 = xc - w / 2, xc + w / 2, z0 + length
    depth = z0 + 0.3 * length
    ctx.object_shadow(x0, x1, z0, z1, h)
    _wheels(ctx, x0, x1, z0, z1, 0.32, CAR)
    body = ctx.mat("car", CAR, depth)
    glass = ctx.mat("car_glass", CAR, depth)
    lamp = ctx.mat("car", CAR, depth, rgb=WHITE if oncoming else RED, emit=1.0)
    belt = 0.6 * h
    if sh.car == "box":
        back = ctx.hexa(x0, x1, z0, z1, 0.22, belt, {"*": body})["back"]
        cab = ctx.hexa(x0 + 0.08, x1 - 0.08, z0 + 0.22 * length, z0 + 0.78 * length, belt, h, {"*": body})
        for name in ("back", "left", "right"):
            if name in cab:
                ctx.panel(cab[name], 0.08, 0.92, 0.15, 0.85, glass)
        for u0 in (0.03, 0.82):
            ctx.panel(back, u0, u0 + 0.15, 0.6, 0.85, lamp)
        return z1
    rear_slope, front_slope = (0.45, 0.3) if oncoming else (0.3, 0.45)
    back = ctx.hexa(x0, x1, z0, z1, 0.22, belt, {"*": body}, inset_x=0.06, inset_back=0.1, inset_front=0.35)[
        "back"
    ]
    cab = ctx.hexa(
        x0 + 0.1,
        x1 - 0.1,
        z0 + 0.12 * length,
        z0 + 0.8 * length,
        belt,
        h,
        {"*": body},
        inset_x=0.1,
        inset_back=rear_slope,
        inset_front=front_slope,
    )
    for name in ("back", "left", "right"):
        if name in cab:
            ctx.panel(cab[name], 0.07, 0.93, 0.1, 0.9, glass)
    ctx.panel(back, 0.0, 1.0, 0.0, 0.22, ctx.mat("tyre", CAR, depth))  # bumper
    ctx.panel(back, 0.38, 0.62, 0.28, 0.45, ctx.mat("car", CAR, depth, rgb=PLATE))
    for u0 in (0.02, 0.76):
        ctx.panel(back, u0, u0 + 0.22, 0.58, 0.86, lamp)
    return z1


def big_vehicle(ctx: Ctx, kind: str, xc: float, z0: float) -> float:
    """Draw a truck, bus or tram (``kind``) whose near end is at ``z0``; returns its far end."""
    (wr, lr, hr) = DIMS[kind]
    w, length, h = ctx.u(*wr), ctx.u(*lr), ctx.u(*hr)
    x0, x1, z1 = xc - w / 2, xc + w / 2, z0 + length
    label = {"truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
    depth = z0 + 0.2 * length
    taper = 0.05 if ctx.style.shapes.car == "rounded" else 0.0
    ctx.object_shadow(x0, x1, z0, z1, h)
    _wheels(ctx, x0, x1, z0, z1, 0.5, label, n_side=3 if kind != "bus" else 2)
    body = ctx.mat(kind, label, depth)
    glass = ctx.mat("car_glass", label, depth)
    lamp = ctx.mat(kind, label, depth, rgb=RED, emit=1.0)
    if kind == "truck":
        # Cab at the far end first: the cargo box in front of it occludes it.
        cab = ctx.hexa(
            x0 + 0.05,
            x1 - 0.05,
            z0 + 0.74 * length,
            z1,
            0.45,
            0.82 * h,
            {"*": ctx.mat("truck", label, depth)},
            inset_x=taper,
        )
        for name, (u0, u1) in (("left", (0.05, 0.5)), ("right", (0.5, 0.95))):  # windows at the front
            if name in cab:
                ctx.panel(cab[name], u0, u1, 0.5, 0.85, glass)
        faces = ctx.hexa(x0, x1, z0, z0 + 0.72 * length, 0.55, h, {"*": body}, inset_x=taper)
        ctx.panel(faces["back"], 0.495, 0.505, 0.0, 1.0, ctx.mat("tyre", label, depth))
        for u0 in (0.02, 0.88):
            ctx.panel(faces["back"], u0, u0 + 0.1, 0.02, 0.08, lamp)
        return z1
    floor = 0.35 if kind == "bus" else 0.45
    faces = ctx.hexa(x0, x1, z0, z1, floor, h, {"*": body}, inset_x=taper)
    ctx.panel(faces["back"], 0.1, 0.9, 0.5, 0.85, glass)
    for name in ("left", "right"):
        if name in faces:
            n_win = int(length / 1.6)
            for k in range(n_win):
                ctx.panel(faces[name], (k + 0.1) / n_win, (k + 0.9) / n_win, 0.5, 0.85, glass)
    for u0 in (0.03, 0.87):
        ctx.panel(faces["back"], u0, u0 + 0.1, 0.1, 0.2, lamp)
    return z1
