"""Pinhole camera over a flat ground plane.

World coordinates are metres: X to the right, Y up from the ground, Z forward from the camera.
Projecting everything through one camera is what keeps sizes and positions plausible: an object's
pixel height is ``f * height / Z`` and its foot sits on the ground row for its depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Points closer than this are clamped: PIL copes with huge coordinates, not with Z <= 0.
MIN_DEPTH = 0.3

Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class Camera:
    """Image size, focal length (px), principal point, horizon row and camera height (m)."""

    h: int
    w: int
    f: float
    cx: float
    horizon: float
    height: float

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """Pixel (column, row) of world point ``(x, y, z)``."""
        z = max(z, MIN_DEPTH)
        return self.cx + self.f * x / z, self.horizon + self.f * (self.height - y) / z

    def poly(self, pts: list[Point3]) -> list[tuple[float, float]]:
        """Project a list of world points (a polygon's corners)."""
        return [self.project(*p) for p in pts]

    def project_many(self, pts: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`project` of ``[..., 3]`` world points to ``[..., 2]`` pixels."""
        z = np.maximum(pts[..., 2], MIN_DEPTH)
        return np.stack(
            [self.cx + self.f * pts[..., 0] / z, self.horizon + self.f * (self.height - pts[..., 1]) / z],
            axis=-1,
        )

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, MIN_DEPTH)

    def ground_depth(self) -> np.ndarray:
        """Depth (m) of the ground seen by each pixel ``[H, W]``; ``inf`` at and above the horizon.

        Used for fog and for ground textures, which must shrink with distance to look flat.
        """
        rows = np.arange(self.h, dtype=np.float32)[:, None] + 0.5 - self.horizon
        with np.errstate(divide="ignore"):
            depth = np.where(rows > 0, self.f * self.height / np.maximum(rows, 1e-6), np.inf)
        return np.broadcast_to(depth, (self.h, self.w)).astype(np.float32)

    def ground_x(self, depth: np.ndarray) -> np.ndarray:
        """Lateral ground coordinate X (m) of each pixel, given its ground depth ``[H, W]``."""
        cols = np.arange(self.w, dtype=np.float32)[None, :] + 0.5 - self.cx
        return np.where(np.isfinite(depth), cols * depth / self.f, 0.0).astype(np.float32)


def bilinear(corners: tuple[Point3, Point3, Point3, Point3], u: float, v: float) -> Point3:
    """Point at ``(u, v)`` in [0, 1]^2 of a quad given as (bottom-left, bottom-right, top-right, top-left)."""
    bl, br, tr, tl = corners
    a, b, c, d = (1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v  # plain floats: called thousands of times
    return tuple(a * p + b * q + c * r + d * s for p, q, r, s in zip(bl, br, tr, tl, strict=True))  # type: ignore[return-value]


def sub_quad(
    corners: tuple[Point3, Point3, Point3, Point3], u0: float, u1: float, v0: float, v1: float
) -> list[Point3]:
    """Corners of the part ``[u0, u1] x [v0, v1]`` of a quad (windows on a facade, lights on a car)."""
    return [
        bilinear(corners, u0, v0),
        bilinear(corners, u1, v0),
        bilinear(corners, u1, v1),
        bilinear(corners, u0, v1),
    ]


def hexa_faces(
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    y0: float,
    y1: float,
    inset_x: float = 0.0,
    inset_front: float = 0.0,
    inset_back: float = 0.0,
) -> dict[str, tuple[Point3, Point3, Point3, Point3]]:
    """Faces of a box whose top is inset (a tapered cabin, a roof): name -> quad corners.

    Corners run (bottom-left, bottom-right, top-right, top-left) as seen from outside the face.
    ``inset_back`` narrows the top at the near end (z0, a sloped rear window), ``inset_front`` at z1.
    """
    tx0, tx1 = x0 + inset_x, x1 - inset_x
    tz0, tz1 = z0 + inset_back, z1 - inset_front
    return {
        "back": ((x0, y0, z0), (x1, y0, z0), (tx1, y1, tz0), (tx0, y1, tz0)),
        "left": ((x0, y0, z1), (x0, y0, z0), (tx0, y1, tz0), (tx0, y1, tz1)),
        "right": ((x1, y0, z0), (x1, y0, z1), (tx1, y1, tz1), (tx1, y1, tz0)),
        "top": ((tx0, y1, tz0), (tx1, y1, tz0), (tx1, y1, tz1), (tx0, y1, tz1)),
        "front": ((x1, y0, z1), (x0, y0, z1), (tx0, y1, tz1), (tx1, y1, tz1)),
        "bottom": ((x0, y0, z1), (x1, y0, z1), (x1, y0, z0), (x0, y0, z0)),
    }


def visible_faces(
    cam: Camera, faces: dict[str, tuple[Point3, Point3, Point3, Point3]]
) -> dict[str, tuple[Point3, Point3, Point3, Point3]]:
    """The faces of a convex solid that face the camera (back-face culling; they never overlap)."""
    out = {}
    for name, quad in faces.items():
        p0, p1, _, p3 = quad
        a = (p3[0] - p0[0], p3[1] - p0[1], p3[2] - p0[2])
        b = (p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2])
        normal = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])  # outward
        # Vector from the face to the eye at (0, height, 0); the face's first corner is on its plane.
        eye = (-p0[0], cam.height - p0[1], -p0[2])
        if normal[0] * eye[0] + normal[1] * eye[1] + normal[2] * eye[2] > 1e-9:
            out[name] = quad
    return out
