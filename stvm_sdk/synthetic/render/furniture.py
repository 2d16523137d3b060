"""Street furniture: poles with lamps, traffic lights and signs; trees; walls, fences, hedges; clutter.

Clutter (bins, bollards, advertising columns) is labelled ``static`` (ignored in training and
evaluation, as in Cityscapes): it adds target-domain distractors without changing the classes.
"""

from __future__ import annotations

import numpy as np

from stvm_sdk.synthetic.render.labels import (
    FENCE,
    POLE,
    STATIC,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    WALL,
)
from stvm_sdk.synthetic.render.paint import Ctx

LAMP_COLOURS = ((0.9, 0.1, 0.05), (0.95, 0.7, 0.05), (0.1, 0.85, 0.3))


def pole(ctx: Ctx, x: float, z: float, kind: str) -> None:
    """A pole at ``(x, z)`` carrying a street ``lamp``, a traffic ``light`` or a ``sign``."""
    slim = ctx.style.shapes.car == "rounded"
    w = ctx.u(0.1, 0.16) if slim else ctx.u(0.2, 0.26)
    top = ctx.u(3.0, 4.0) if kind == "sign" else ctx.u(4.5, 8.0)
    mat = ctx.mat("pole", POLE, z)
    ctx.object_shadow(x - w / 2, x + w / 2, z - w / 2, z + w / 2, top)
    ctx.hexa(x - w / 2, x + w / 2, z - w / 2, z + w / 2, 0.0, top, {"*": mat})
    toward_road = -np.sign(x) or 1.0
    if kind == "lamp":
        reach = ctx.u(1.0, 2.5)
        ctx.canvas.line(
            [ctx.cam.project(x, top, z), ctx.cam.project(x + toward_road * reach, top + 0.3, z)],
            0.08 * ctx.cam.scale(z),
            mat,
        )
        hx = x + toward_road * reach
        ctx.hexa(
            hx - 0.3,
            hx + 0.3,
            z - 0.15,
            z + 0.15,
            top + 0.05,
            top + 0.3,
            {"*": ctx.mat("pole", POLE, z)},
        )
        lu, lv = ctx.cam.project(hx, top + 0.05, z)
        ctx.canvas.ellipse(
            lu,
            lv,
            0.25 * ctx.cam.scale(z),
            0.06 * ctx.cam.scale(z),
            ctx.mat("pole", POLE, z, rgb=(0.95, 0.9, 0.7), emit=2.0),
        )
    elif kind == "light":
        over_road = ctx.random() < 0.4
        hx = x + toward_road * ctx.u(2.0, 4.0) if over_road else x
        if over_road:
            ctx.canvas.line(
                [ctx.cam.project(x, top - 0.3, z), ctx.cam.project(hx, top - 0.3, z)],
                0.1 * ctx.cam.scale(z),
                mat,
            )
        y0 = top - 1.4 if over_road else ctx.u(2.2, top - 1.0)
        traffic_light(ctx, hx, y0, z)
    else:
        sign(ctx, x, ctx.u(2.0, top - 0.7), z)
        if ctx.random() < 0.3:
            sign(ctx, x, top - 0.35, z)


def traffic_light(ctx: Ctx, x: float, y0: float, z: float) -> None:
    """A 3-lamp traffic light box whose bottom is at height ``y0``, facing the camera."""
    box = ctx.hexa(
        x - 0.18, x + 0.18, z - 0.15, z + 0.15, y0, y0 + 0.95, {"*": ctx.mat("light_box", TRAFFIC_LIGHT, z)}
    )
    on = ctx.pick(3)
    s = ctx.cam.scale(z)
    for k in range(3):
        lu, lv = ctx.cam.project(x, y0 + 0.78 - 0.3 * k, z - 0.15)
        r, g, b = LAMP_COLOURS[k] if k == on else tuple(0.25 * c for c in LAMP_COLOURS[k])
        ctx.canvas.ellipse(
            lu,
            lv,
            0.1 * s,
            0.1 * s,
            ctx.mat("light_box", TRAFFIC_LIGHT, z, rgb=(r, g, b), emit=2.0 if k == on else 0.0),
        )
    del box


def sign(ctx: Ctx, x: float, y: float, z: float) -> None:
    """A traffic sign plate centred at height ``y`` (circle, triangle or rectangle) with an inner mark."""
    s = ctx.cam.scale(z)
    cu, cv = ctx.cam.project(x, y, z)
    r = ctx.u(0.3, 0.45) * s
    outer, inner = ctx.mat("sign", TRAFFIC_SIGN, z), ctx.mat("sign", TRAFFIC_SIGN, z)
    shape = ctx.pick(3)
    if shape == 0:
        ctx.canvas.ellipse(cu, cv, r, r, outer)
        ctx.canvas.ellipse(cu, cv, 0.7 * r, 0.7 * r, inner)
    elif shape == 1:
        ctx.canvas.polygon([(cu - r, cv + 0.8 * r), (cu + r, cv + 0.8 * r), (cu, cv - r)], outer)
        ctx.canvas.polygon(
            [(cu - 0.55 * r, cv + 0.5 * r), (cu + 0.55 * r, cv + 0.5 * r), (cu, cv - 0.45 * r)], inner
        )
    else:
        ctx.canvas.polygon(
            [(cu - r, cv - 0.8 * r), (cu + r, cv - 0.8 * r), (cu + r, cv + 0.8 * r), (cu - r, cv + 0.8 * r)],
            outer,
        )
        ctx.canvas.polygon(
            [
                (cu - 0.6 * r, cv - 0.15 * r),
                (cu + 0.6 * r, cv - 0.15 * r),
                (cu + 0.6 * r, cv + 0.15 * r),
                (cu - 0.6 * r, cv + 0.15 * r),
            ],
            inner,
        )


def tree(ctx: Ctx, x: float, z: float) -> None:
    """A tree: trunk (labelled vegetation, as in Cityscapes) and a crown."""
    s = ctx.cam.scale(z)
    clumps = ctx.style.shapes.tree == "clumps"
    crown_r = ctx.u(1.2, 2.8)
    crown_y = ctx.u(3.0, 5.5) + crown_r * 0.5
    tw = ctx.u(0.15, 0.3) if clumps else ctx.u(0.3, 0.4)
    ctx.object_shadow(x - crown_r, x + crown_r, z - 0.5 * crown_r, z + 0.5 * crown_r, crown_y)
    ctx.hexa(
        x - tw / 2, x + tw / 2, z - tw / 2, z + tw / 2, 0.0, crown_y, {"*": ctx.mat("trunk", VEGETATION, z)}
    )
    cu, cv = ctx.cam.project(x, crown_y, z)
    if not clumps:
        ctx.canvas.ellipse(cu, cv, crown_r * s, crown_r * s, ctx.mat("vegetation", VEGETATION, z))
        return
    shades = [ctx.mat("vegetation", VEGETATION, z, light=lt) for lt in (0.7, 0.9, 1.1)]
    for _ in range(7 + ctx.pick(8)):
        a, d = ctx.u(0, 2 * np.pi), ctx.u(0.0, 0.8) * crown_r
        du, dv = d * np.cos(a) * s * 1.2, d * np.sin(a) * s * 0.9
        rr = ctx.u(0.35, 0.7) * crown_r * s
        shade = shades[min(2, int((dv < 0) + (ctx.random() < 0.5)))]  # lit from above
        ctx.canvas.ellipse(cu + du, cv + dv, rr * ctx.u(0.8, 1.3), rr, shade)


def barrier(ctx: Ctx, x: float, z0: float, z1: float, kind: str) -> None:
    """A wall, fence or hedge along the line ``x`` from ``z0`` to ``z1``."""
    t = 0.25
    x0, x1 = (x - t, x) if x > 0 else (x, x + t)
    zm = 0.5 * (z0 + z1)
    if kind == "hedge":
        ctx.hexa(
            x0 - 0.3, x1 + 0.3, z0, z1, 0.0, ctx.u(0.8, 1.6), {"*": ctx.mat("vegetation", VEGETATION, zm)}
        )
    elif kind == "wall":
        ctx.hexa(x0, x1, z0, z1, 0.0, ctx.u(0.6, 2.0), {"*": ctx.mat("wall", WALL, zm)})
    elif ctx.style.shapes.fence == "solid":
        ctx.hexa(x0, x1, z0, z1, 0.0, ctx.u(1.0, 1.8), {"*": ctx.mat("fence", FENCE, zm)})
    else:  # bars: posts, two rails and thin uprights, so what is behind shows through
        mat, h = ctx.mat("fence", FENCE, zm), ctx.u(1.0, 1.8)
        for y in (0.15, h - 0.08):
            ctx.hexa(x0, x1, z0, z1, y, y + 0.06, {"*": mat})
        step = 0.16 if ctx.cam.scale(zm) * 0.16 > 3 else 2.0
        for zb in np.arange(z0, z1, step):
            ctx.hexa(x0 + 0.08, x1 - 0.08, zb, zb + 0.04, 0.0, h, {"*": mat})


def clutter(ctx: Ctx, x: float, z: float) -> None:
    """An ignored ("static") object: a bin, a bollard or an advertising column."""
    kind = ctx.pick(3, [0.5, 0.35, 0.15])
    w, h = ((0.6, 1.0), (0.15, 0.9), (1.2, 2.8))[kind]
    mat = ctx.mat("clutter", STATIC, z)
    ctx.object_shadow(x - w / 2, x + w / 2, z - w / 2, z + w / 2, h)
    ctx.hexa(x - w / 2, x + w / 2, z - w / 2, z + w / 2, 0.0, h, {"*": mat}, inset_x=0.0)
