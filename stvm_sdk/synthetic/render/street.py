"""The static street: sky, ground (road, sidewalks, terrain), markings, facades and barriers.

A street runs along +Z. Its cross-section (lanes, parking strips, sidewalks, terrain, building line)
is sampled from the domain's layout priors; the camera sits in one of the lanes heading away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stvm_sdk.synthetic.render.labels import BUILDING, RAIL_TRACK, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION
from stvm_sdk.synthetic.render.paint import Ctx

FAR = 400.0  # depth at which the street is drawn to end (close enough to the horizon)


@dataclass
class Street:
    """Cross-section (metres, camera at x=0) and longitudinal features of one street."""

    centre: float  # x of the centre line
    lanes: int
    lane_width: float
    park: tuple[float, float]  # parking strip width on the left / right (0 = none)
    sidewalk: tuple[float, float]
    face: tuple[float, float]  # |x| of the building lines, left / right
    z_end: float  # depth of the block closing the street (FAR when open)
    crossing: tuple[float, float] | None  # z-range of a side street
    tram: bool
    gaps: list[tuple[int, float, float]] = field(default_factory=list)  # (side, z0, z1) without buildings

    def edge(self, side: int) -> float:
        """x of the kerb on ``side`` (-1 left, +1 right)."""
        half = self.lanes * self.lane_width + self.park[(side + 1) // 2]
        return self.centre + side * half

    def crosses(self, z0: float, z1: float) -> bool:
        """Whether the stretch ``[z0, z1]`` overlaps the side street (nothing stands in it)."""
        return self.crossing is not None and z0 < self.crossing[1] and self.crossing[0] < z1

    def lane_x(self, k: int) -> float:
        """Centre x of lane ``k``: 0..lanes-1 go our way (right), negative ones oncoming."""
        return self.centre + (k + 0.5) * self.lane_width


def sample_street(ctx: Ctx, parked: tuple[bool, bool]) -> Street:
    """Draw a street cross-section from the layout priors; the camera is in one of our lanes."""
    lay = ctx.style.layout
    lanes = lay.lanes[0] + ctx.pick(lay.lanes[1] - lay.lanes[0] + 1)
    lw = ctx.u(*lay.lane_width)
    ego = ctx.pick(lanes)
    centre = -(ego + 0.5) * lw + ctx.u(-0.3, 0.3)
    park = tuple(ctx.u(2.0, 2.4) if p else 0.0 for p in parked)
    sidewalk = (ctx.u(*lay.sidewalk), ctx.u(*lay.sidewalk))
    st = Street(centre, lanes, lw, park, sidewalk, (0.0, 0.0), FAR, None, False)  # type: ignore[arg-type]
    setback = [ctx.u(0.0, 4.0) if ctx.random() < lay.terrain_prob else 0.0 for _ in range(2)]
    st.face = (-(st.edge(-1) - sidewalk[0] - setback[0]), st.edge(1) + sidewalk[1] + setback[1])
    if ctx.random() < 0.6:
        st.z_end = ctx.u(70.0, 180.0)
    if ctx.random() < 0.35:
        z0 = ctx.u(15.0, 45.0)
        st.crossing = (z0, z0 + ctx.u(8.0, 14.0))
    st.tram = ctx.random() < lay.train_prob
    return st


def draw_sky_and_ground(ctx: Ctx, st: Street) -> None:
    """Sky bands (a vertical colour gradient), then the ground from the far end to the camera."""
    cam, lk = ctx.cam, ctx.style.looks["sky"]
    pair = 2 * ctx.pick(len(lk.colours) // 2)  # sky colours come as (zenith, horizon) pairs
    top, bottom = (np.asarray(c, dtype=np.float64) / 255.0 for c in lk.colours[pair : pair + 2])
    tint = 1.0 + lk.jitter * 3.46 * (np.array([ctx.random() for _ in range(3)]) - 0.5)
    bands = 12
    for k in range(bands):
        rgb = np.clip(((1 - k / (bands - 1)) * top + k / (bands - 1) * bottom) * tint, 0.0, 1.0)
        y0 = cam.horizon * k / bands - 1
        mat = ctx.mat("sky", SKY, np.inf, rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])))
        ctx.canvas.polygon([(0, y0), (cam.w, y0), (cam.w, cam.h), (0, cam.h)], mat)
    wide = 4000.0
    ctx.quad(
        [(-wide, 0, 0.3), (wide, 0, 0.3), (wide, 0, FAR), (-wide, 0, FAR)],
        ctx.mat("terrain", TERRAIN, 0.0, ground=True),
    )
    for side in (-1, 1):
        kerb, outer = st.edge(side), side * st.face[(side + 1) // 2]
        paved = outer if ctx.random() < 0.5 else st.edge(side) + side * st.sidewalk[(side + 1) // 2]
        walk = ctx.mat("sidewalk", SIDEWALK, 0.0, ground=True)
        far_x = side * wide if ctx.random() < 0.5 else paved
        ctx.quad(
            [
                (kerb, 0.12, 0.3),
                (paved, 0.12, 0.3),
                (paved, 0.12, st.z_end),
                (far_x, 0.12, st.z_end),
                (kerb, 0.12, st.z_end),
            ],
            walk,
        )
        ctx.quad(
            [(kerb, 0.0, 0.3), (kerb, 0.0, FAR), (kerb, 0.12, FAR), (kerb, 0.12, 0.3)], walk
        )  # kerb face
    road = ctx.mat("road", ROAD, 0.0, ground=True)
    ctx.quad([(st.edge(-1), 0, 0.3), (st.edge(1), 0, 0.3), (st.edge(1), 0, FAR), (st.edge(-1), 0, FAR)], road)
    if st.crossing:
        z0, z1 = st.crossing
        ctx.quad([(-wide, 0.0, z0), (wide, 0.0, z0), (wide, 0.0, z1), (-wide, 0.0, z1)], road)
    _markings(ctx, st)


def _markings(ctx: Ctx, st: Street) -> None:
    """Lane lines (dashed), the centre line, a zebra crossing before a side street, tram rails."""
    paint = ctx.mat("marking", ROAD, 0.0, ground=True)
    offset, lw = ctx.u(0.0, 9.0), st.lane_width
    lines = [st.centre + k * lw for k in range(-st.lanes + 1, st.lanes) if k != 0]
    for x in lines:
        for z in np.arange(offset, 150.0, 9.0):
            ctx.quad(
                [(x - 0.07, 0, z), (x + 0.07, 0, z), (x + 0.07, 0, z + 3.0), (x - 0.07, 0, z + 3.0)], paint
            )
    c = st.centre
    ctx.quad([(c - 0.08, 0, 0.3), (c + 0.08, 0, 0.3), (c + 0.08, 0, FAR), (c - 0.08, 0, FAR)], paint)
    if st.crossing:
        z0 = st.crossing[0] - 4.0
        for x in np.arange(st.edge(-1) + 0.3, st.edge(1) - 0.3, 1.0):
            ctx.quad([(x, 0, z0), (x + 0.5, 0, z0), (x + 0.5, 0, z0 + 3.0), (x, 0, z0 + 3.0)], paint)
    if st.tram:
        rail = ctx.mat("rail", RAIL_TRACK, 0.0, ground=True)
        for x in (c - 0.72, c + 0.72):
            ctx.quad([(x - 0.05, 0, 0.3), (x + 0.05, 0, 0.3), (x + 0.05, 0, FAR), (x - 0.05, 0, FAR)], rail)


def draw_buildings(ctx: Ctx, st: Street) -> None:
    """Facades along both sides (far to near, so nearer ones cover farther ones) and the far block."""
    lay, sens = ctx.style.layout, ctx.style.sensor
    if st.z_end < 300:
        x = -80.0
        while x < 80.0:
            w = ctx.u(8.0, 25.0)
            _building(ctx, x, x + w, st.z_end, st.z_end + 15.0, ctx.u(*lay.building_height), 1.0)
            x += w
    sun_side = 1 if ctx.sun_dx >= 0 else -1  # the sun shines toward +x: right facades face it
    for side in (-1, 1):
        blocks, z = [], 0.3
        while z < min(st.z_end, 220.0):
            z1 = z + ctx.u(*lay.building_length)
            if st.crossing and z1 > st.crossing[0] and z < st.crossing[1]:
                z1 = st.crossing[0]
            gap = ctx.random() < lay.gap_prob or z1 - z < 2.0
            blocks.append((z, z1, gap))
            z = max(z1, st.crossing[1]) if st.crossing and z1 == st.crossing[0] else z1
        face = st.face[(side + 1) // 2]
        light = 1.0 + 0.5 * sens.face_contrast * (1 if side == sun_side else -1)
        for z0, z1, gap in reversed(blocks):  # far to near, so nearer blocks cover farther ones
            if gap:
                st.gaps.append((side, z0, z1))
                _gap_fill(ctx, side * (face + ctx.u(2.0, 12.0)), z0, z1)
                continue
            height = ctx.u(*lay.building_height)
            x0, x1 = (face, face + 15.0) if side > 0 else (-face - 15.0, -face)
            _building(ctx, x0, x1, z0, z1, height, light)
            if ctx.sun_dx * side < 0:  # buildings on the sun's side shade the street
                ctx.object_shadow(x0, x1, z0, z1, height)


def _gap_fill(ctx: Ctx, x: float, z0: float, z1: float) -> None:
    """What shows between buildings: open sky, or a mass of trees behind the building line."""
    if ctx.random() < 0.5:
        ctx.hexa(
            x - 4.0,
            x + 4.0,
            z0 + 0.5,
            z1 - 0.5,
            0.0,
            ctx.u(4.0, 12.0),
            {"*": ctx.mat("vegetation", VEGETATION, 0.5 * (z0 + z1))},
            inset_x=1.0,
        )


def _building(ctx: Ctx, x0: float, x1: float, z0: float, z1: float, height: float, light: float) -> None:
    """One building block: its visible faces, then windows on the face that looks at the street."""
    depth = max(0.5 * (z0 + z1), 3.0)
    colour = ctx.colour("building")
    road_face = ctx.mat("building", BUILDING, depth, light=light, rgb=colour)
    front = ctx.mat("building", BUILDING, depth, light=1.0 - 0.3 * ctx.style.sensor.face_contrast, rgb=colour)
    faces = ctx.hexa(x0, x1, z0, z1, 0.0, height, {"*": road_face, "back": front})
    glass = ctx.mat("window", BUILDING, depth, emit=0.7 if ctx.random() < 0.3 else 0.0)  # lit at night
    detailed = ctx.style.shapes.facade == "detailed"
    for name, face in faces.items():
        if name == "top":
            continue
        span = (z1 - z0) if name in ("left", "right") else (x1 - x0)
        cols, floors = max(1, int(span / ctx.u(2.4, 3.6))), max(1, int(height / 3.1))
        us = (np.arange(cols)[:, None] + np.array([0.25, 0.75])) / cols
        vs = (np.arange(floors)[:, None] + np.array([0.3, 0.75])) / floors
        if detailed:  # storefront glass at street level instead of the first row of windows
            ctx.panel(face, 0.05, 0.95, 0.02, 0.8 / floors, glass)
            vs = vs[1:]
        ctx.panel_grid(face, us, vs, glass)
