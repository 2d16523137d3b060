"""Drawing context shared by scene and object code: camera + canvas + style + the frame's RNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stvm_sdk.synthetic.render.camera import Camera, Point3, hexa_faces, sub_quad, visible_faces
from stvm_sdk.synthetic.render.canvas import BRICKS, GLASS, Canvas, Material
from stvm_sdk.synthetic.render.styles import Style

Quad = tuple[Point3, Point3, Point3, Point3]


@dataclass
class Ctx:
    """Everything a drawing function needs; all randomness comes from ``rng`` (one per frame)."""

    cam: Camera
    canvas: Canvas
    style: Style
    rng: np.random.Generator
    sun_dx: float = 0.0  # ground displacement of a cast shadow per metre of height (x, z)
    sun_dz: float = 0.0
    _buf: list[float] = field(default_factory=list, init=False, repr=False)

    def random(self) -> float:
        """A uniform draw in [0, 1) from ``rng``.

        Scenes make about a thousand scalar draws: taking them from a block drawn at once is ~20x
        cheaper than one generator call each, and just as deterministic.
        """
        if not self._buf:
            self._buf = self.rng.random(512).tolist()[::-1]
        return self._buf.pop()

    def u(self, lo: float, hi: float) -> float:
        """A uniform draw in [lo, hi)."""
        return lo + (hi - lo) * self.random()

    def exponential(self, mean: float) -> float:
        """An exponential draw (distances of objects: many near, a few far)."""
        return -mean * math.log(1.0 - self.random())

    def pick(self, n: int, weights: Sequence[float] | None = None) -> int:
        """An index in ``range(n)``, uniform or with the given (normalised) weights."""
        r = self.random()
        if weights is None:
            return min(int(r * n), n - 1)
        for i, w in enumerate(weights):
            r -= w
            if r < 0:
                return i
        return n - 1

    def colour(self, look: str) -> tuple[float, float, float]:
        """A colour of ``look``, jittered per instance, in [0, 1]."""
        lk = self.style.looks[look]
        base = lk.colours[self.pick(len(lk.colours))]
        # One brightness and three hue jitters, uniform with unit variance (the shape does not matter).
        n = [3.46 * (self.random() - 0.5) for _ in range(4)]
        return tuple(
            min(1.0, max(0.0, c / 255.0 * (1.0 + lk.jitter * (n[0] + 0.5 * e))))
            for c, e in zip(base, n[1:], strict=True)
        )  # type: ignore[return-value]

    def mat(
        self,
        look: str,
        label: int,
        depth: float,
        *,
        light: float = 1.0,
        emit: float = 0.0,
        rgb: tuple[float, float, float] | None = None,
        ground: bool = False,
    ) -> int:
        """Register a material for ``look`` at ``depth`` (m) and return its index."""
        lk = self.style.looks[look]
        scale = lk.scale
        if lk.tex in (BRICKS, GLASS):  # screen-space patterns: metres to pixels at this depth
            scale = lk.scale * self.cam.scale(depth) if depth > 0 else lk.scale
        m = Material(
            label=label,
            rgb=rgb if rgb is not None else self.colour(look),
            tex=lk.tex,
            amp=lk.amp,
            scale=scale,
            depth=depth,
            grad=lk.grad,
            light=light,
            emit=emit,
            ground=ground,
        )
        return self.canvas.add(m)

    def quad(self, pts: list[Point3] | Quad, mat: int) -> None:
        """Fill a world-space polygon."""
        self.canvas.polygon(self.cam.poly(list(pts)), mat)

    def hexa(
        self,
        x0: float,
        x1: float,
        z0: float,
        z1: float,
        y0: float,
        y1: float,
        mats: dict[str, int],
        **insets: float,
    ) -> dict[str, Quad]:
        """Draw the visible faces of a (tapered) box; ``mats`` maps face name or ``"*"`` to a material."""
        faces = visible_faces(self.cam, hexa_faces(x0, x1, z0, z1, y0, y1, **insets))
        for name, q in faces.items():
            self.quad(q, mats.get(name, mats["*"]))
        return faces

    def panel(self, face: Quad, u0: float, u1: float, v0: float, v1: float, mat: int) -> None:
        """Fill the part ``[u0, u1] x [v0, v1]`` of a face (a window, a light, a sign)."""
        self.quad(sub_quad(face, u0, u1, v0, v1), mat)

    def panel_grid(self, face: Quad, us: np.ndarray, vs: np.ndarray, mat: int, min_px: float = 1.0) -> None:
        """Fill a grid of panels (windows): every ``us[i]`` x ``vs[j]`` range, both ``[N, 2]``.

        Vectorised because facades carry hundreds of windows; panels narrower than ``min_px`` on
        screen are skipped (they would be a single aliased pixel of glass).
        """
        bl, br, tr, tl = (np.asarray(c, dtype=np.float64) for c in face)
        shape = (len(us), len(vs), 4)  # panel i, j; corners in the face's (bl, br, tr, tl) order
        u = np.broadcast_to(us[:, None, [0, 1, 1, 0]], shape)[..., None]
        v = np.broadcast_to(vs[None, :, [0, 0, 1, 1]], shape)[..., None]
        pts = (1 - v) * ((1 - u) * bl + u * br) + v * ((1 - u) * tl + u * tr)
        px = self.cam.project_many(pts).reshape(-1, 4, 2)
        size = np.minimum(np.ptp(px[..., 0], axis=1), np.ptp(px[..., 1], axis=1))
        for quad in px[size >= min_px].tolist():
            self.canvas.polygon(quad, mat)

    def ground_shadow(self, pts: list[tuple[float, float]], strength: float = 1.0) -> None:
        """Cast-shadow polygon given as ground points (x, z)."""
        self.canvas.shadow(self.cam.poly([(x, 0.0, z) for x, z in pts]), strength)

    def object_shadow(self, x0: float, x1: float, z0: float, z1: float, height: float) -> None:
        """Shadow of an upright object with footprint [x0, x1] x [z0, z1] and the given height."""
        dx, dz = self.sun_dx * height, self.sun_dz * height
        self.ground_shadow(
            [(x0, z0), (x1, z0), (x1 + dx, z0 + dz), (x1 + dx, z1 + dz), (x0 + dx, z1 + dz), (x0, z1)]
        )
        # Contact shadow: the ground right under an object is dark whatever the sun does.
        self.ground_shadow([(x0 - 0.1, z0 - 0.1), (x1 + 0.1, z0 - 0.1), (x1 + 0.1, z1), (x0 - 0.1, z1)], 0.8)
