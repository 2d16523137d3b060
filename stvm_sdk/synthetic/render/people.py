"""Pedestrians, riders and two-wheelers, drawn as flat figures standing on the ground.

Figures are built in metres around the foot point and scaled by the camera (``f / Z`` pixels per
metre), so their size always matches their depth. Source figures are blocky and brightly dressed;
target figures are slimmer, vary in height, stride and view angle, and wear darker clothes.
"""

from __future__ import annotations

from collections.abc import Callable

from stvm_sdk.synthetic.render.labels import BICYCLE, MOTORCYCLE, PERSON, RIDER
from stvm_sdk.synthetic.render.paint import Ctx

ToPx = Callable[[float, float], tuple[float, float]]


def _to_px(ctx: Ctx, x: float, z: float) -> tuple[ToPx, float]:
    """Map figure coordinates (metres right of / above the foot point) to pixels."""
    u, v = ctx.cam.project(x, 0.0, z)
    s = ctx.cam.scale(z)
    return (lambda mx, my: (u + mx * s, v - my * s)), s


def _upper_body(
    ctx: Ctx, p: ToPx, s: float, hip: float, height: float, label: int, z: float, k: float
) -> None:
    """Torso, arms and head from the hips up; ``k`` narrows the figure (seen from the side)."""
    shirt, skin = ctx.mat("clothes", label, z), ctx.mat("skin", label, z)
    shoulder = hip + 0.3 * height
    head_r = 0.115 * height / 1.8
    if ctx.style.shapes.person == "blocky":
        ctx.canvas.polygon([p(-0.24, hip), p(0.24, hip), p(0.24, shoulder), p(-0.24, shoulder)], shirt)
        for sx in (-1, 1):
            ctx.canvas.polygon(
                [
                    p(sx * 0.24, shoulder),
                    p(sx * 0.33, shoulder),
                    p(sx * 0.33, hip + 0.05),
                    p(sx * 0.24, hip + 0.05),
                ],
                shirt,
            )
        hu, hv = p(0.0, shoulder + head_r + 0.02)
        ctx.canvas.ellipse(hu, hv, head_r * s, head_r * s, skin)
        return
    swing = ctx.u(-0.12, 0.12)
    for sx in (-1, 1):
        ctx.canvas.polygon(
            [
                p(sx * 0.2 * k, shoulder),
                p(sx * 0.2 * k + sx * 0.08, shoulder - 0.05),
                p(sx * 0.17 * k + sx * swing + 0.05, hip - 0.12),
                p(sx * 0.14 * k + sx * swing, hip - 0.1),
            ],
            shirt,
        )
    ctx.canvas.polygon(
        [
            p(-0.15 * k, hip),
            p(0.15 * k, hip),
            p(0.21 * k, shoulder),
            p(0.05, shoulder + 0.05),
            p(-0.05, shoulder + 0.05),
            p(-0.21 * k, shoulder),
        ],
        shirt,
    )
    hu, hv = p(0.0, shoulder + head_r + 0.04)
    ctx.canvas.ellipse(hu, hv, 0.8 * head_r * s, head_r * s, skin)
    ctx.canvas.ellipse(
        hu, hv - 0.35 * head_r * s, 0.8 * head_r * s, 0.7 * head_r * s, ctx.mat("clothes", label, z)
    )  # hair or a hat
    if ctx.random() < 0.3:  # a bag or backpack belongs to the person's mask in Cityscapes
        side = 1 if ctx.random() < 0.5 else -1
        ctx.canvas.polygon(
            [
                p(side * 0.12, hip - 0.05),
                p(side * 0.36, hip - 0.05),
                p(side * 0.36, hip + 0.3),
                p(side * 0.12, hip + 0.3),
            ],
            ctx.mat("clothes", label, z),
        )


def person(ctx: Ctx, x: float, z: float) -> None:
    """A pedestrian standing or walking at ground point ``(x, z)``."""
    height = ctx.u(*ctx.style.shapes.person_height)
    p, s = _to_px(ctx, x, z)
    hip = 0.5 * height
    trousers = ctx.mat("clothes", PERSON, z)
    ctx.object_shadow(x - 0.2, x + 0.2, z - 0.15, z + 0.15, height)
    if ctx.style.shapes.person == "blocky":
        for x0 in (-0.2, 0.03):
            ctx.canvas.polygon([p(x0, 0), p(x0 + 0.17, 0), p(x0 + 0.17, hip), p(x0, hip)], trousers)
        k = 1.0
    else:
        k, stride = ctx.u(0.55, 1.0), ctx.u(0.0, 0.18)
        for sx in (-1, 1):
            foot = sx * (0.08 * k + stride)
            ctx.canvas.polygon(
                [p(foot - 0.06, 0), p(foot + 0.06, 0), p(sx * 0.03 + 0.07 * sx * k, hip), p(sx * 0.01, hip)],
                trousers,
            )
    _upper_body(ctx, p, s, hip, height, PERSON, z, k)


def bike(ctx: Ctx, x: float, z: float, motor: bool, side_view: bool) -> None:
    """A bicycle or motorcycle, seen from behind (ridden on the road) or from the side (parked)."""
    label, look = (MOTORCYCLE, "motorcycle") if motor else (BICYCLE, "bicycle")
    frame, tyre = ctx.mat(look, label, z), ctx.mat("tyre", label, z)
    p, s = _to_px(ctx, x, z)
    r = 0.32 if motor else 0.34
    if side_view:
        half = 0.7 if motor else 0.55
        for wx in (-half, half):
            cu, cv = p(wx, r)
            if motor:
                ctx.canvas.ellipse(cu, cv, r * s, r * s, tyre)
            else:
                ctx.canvas.ring(cu, cv, r * s, r * s, max(1.0, 0.05 * s), tyre)
        pts = [
            p(-half, r),
            p(-0.1, r + 0.05),
            p(0.2, 0.75 if not motor else 0.7),
            p(half - 0.1, 0.95),
            p(half, r),
        ]
        ctx.canvas.line(pts, max(1.0, (0.18 if motor else 0.05) * s), frame)
        if motor:
            ctx.canvas.polygon([p(-0.5, 0.45), p(0.45, 0.45), p(0.35, 0.8), p(-0.45, 0.75)], frame)
        return
    wu, wv = p(0.0, r)
    ctx.canvas.ellipse(wu, wv, (0.09 if motor else 0.03) * s, r * s, tyre)
    ctx.canvas.line([p(0.0, 0.3), p(0.0, 0.95)], max(1.0, 0.05 * s), frame)
    ctx.canvas.line([p(-0.32, 1.0), p(0.32, 1.0)], max(1.0, 0.04 * s), frame)
    if motor:
        ctx.canvas.polygon([p(-0.3, 0.35), p(0.3, 0.35), p(0.26, 0.85), p(-0.26, 0.85)], frame)
        ctx.canvas.polygon(
            [p(-0.08, 0.55), p(0.08, 0.55), p(0.08, 0.65), p(-0.08, 0.65)],
            ctx.mat(look, label, z, rgb=(0.85, 0.1, 0.08), emit=1.0),
        )


def rider(ctx: Ctx, x: float, z: float, motor: bool) -> None:
    """A cyclist or motorcyclist riding away from the camera: vehicle first, rider on top."""
    height = ctx.u(*ctx.style.shapes.person_height)
    ctx.object_shadow(x - 0.3, x + 0.3, z - 0.1, z + 1.6, height)
    bike(ctx, x, z, motor, side_view=False)
    p, s = _to_px(ctx, x, z)
    seat = 0.85 if motor else 0.95
    legs = ctx.mat("clothes", RIDER, z)
    for sx in (-1, 1):  # thighs out to the pedals or foot-pegs beside the wheel
        ctx.canvas.polygon(
            [
                p(sx * 0.02, seat + 0.08),
                p(sx * 0.18, seat + 0.05),
                p(sx * 0.2, 0.3 if not motor else 0.4),
                p(sx * 0.1, 0.3 if not motor else 0.4),
            ],
            legs,
        )
    _upper_body(ctx, p, s, seat + 0.05, height, RIDER, z, 1.0 if motor else 0.85)
