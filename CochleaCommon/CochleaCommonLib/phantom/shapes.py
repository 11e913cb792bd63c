"""Vectorised implicit shapes: the small vocabulary the phantom anatomy is built from.

Why implicit functions: every structure is a test ``f(x, y, z) <= 0`` on flat float32 arrays of
sample positions, so the renderer can evaluate the same anatomy at voxel centres, at sub-voxel
samples near the inner ear (partial volume) or at single landmark positions, and ground truth and
image can never disagree. Values are distance-like (millimetres, exact for spheres and capsules,
approximate for ellipsoids) so shells (otic capsule, septa) are thresholds of the same function.
"""

from __future__ import annotations

import numpy as np

Frame = np.ndarray  # 4x4 homogeneous matrix


def local_coords(x: np.ndarray, y: np.ndarray, z: np.ndarray, center, axes: np.ndarray):
    """Coordinates of points in a frame with origin ``center`` and orthonormal columns ``axes`` (3x3)."""
    dx = x - np.float32(center[0])
    dy = y - np.float32(center[1])
    dz = z - np.float32(center[2])
    a = np.asarray(axes, dtype=np.float32)
    u = dx * a[0, 0] + dy * a[1, 0] + dz * a[2, 0]
    v = dx * a[0, 1] + dy * a[1, 1] + dz * a[2, 1]
    w = dx * a[0, 2] + dy * a[1, 2] + dz * a[2, 2]
    return u, v, w


def ellipsoid(x, y, z, center, semi_axes, axes: np.ndarray | None = None, power: float = 2.0) -> np.ndarray:
    """Approximate signed distance to an (optionally rotated, super-) ellipsoid, in mm.

    ``power`` > 2 gives a boxier super-ellipsoid (middle-ear cavity). The value is the normalised
    radius minus one, scaled by the smallest semi-axis, so the zero level is exact and the slope
    is about one near the surface.
    """
    a = np.asarray(semi_axes, dtype=np.float32)
    if axes is None:
        u = x - np.float32(center[0])
        v = y - np.float32(center[1])
        w = z - np.float32(center[2])
    else:
        u, v, w = local_coords(x, y, z, center, axes)
    if power == 2.0:
        r = np.sqrt((u / a[0]) ** 2 + (v / a[1]) ** 2 + (w / a[2]) ** 2)
    else:
        p = np.float32(power)
        r = (np.abs(u / a[0]) ** p + np.abs(v / a[1]) ** p + np.abs(w / a[2]) ** p) ** (1.0 / p)
    return (r - 1.0) * a.min()


def capsule(x, y, z, p0, p1, radius0: float, radius1: float | None = None) -> np.ndarray:
    """Signed distance to a segment ``p0``-``p1`` swept by a sphere whose radius tapers linearly."""
    p0 = np.asarray(p0, dtype=np.float32)
    d = np.asarray(p1, dtype=np.float32) - p0
    dd = float(d @ d) or 1e-12
    px, py, pz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
    qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
    r1 = radius0 if radius1 is None else radius1
    return np.sqrt(qx * qx + qy * qy + qz * qz) - (radius0 + (r1 - radius0) * t)


def torus_arc(x, y, z, center, axes: np.ndarray, major: float, minor: float, gap_center_deg: float,
              gap_deg: float) -> np.ndarray:
    """Signed distance to a torus (ring in the local u-v plane) with an angular gap left open.

    Semicircular canals are such arcs; the gap is where the canal's two ends open into the
    vestibule. Outside the arc the distance is to the nearer end cap (a sphere).
    """
    u, v, w = local_coords(x, y, z, center, axes)
    ang = np.degrees(np.arctan2(v, u)) - np.float32(gap_center_deg)
    ang = (ang + 180.0) % 360.0 - 180.0
    rho = np.sqrt(u * u + v * v) - np.float32(major)
    d_ring = np.sqrt(rho * rho + w * w) - np.float32(minor)
    half = gap_deg / 2.0
    inside_gap = np.abs(ang) < half
    if np.any(inside_gap):
        out = d_ring.copy()
        g = np.flatnonzero(inside_gap)
        ends = []
        for sign in (-1.0, 1.0):
            a = np.radians(gap_center_deg + sign * half)
            ex, ey = major * np.cos(a), major * np.sin(a)
            ends.append(np.sqrt((u[g] - ex) ** 2 + (v[g] - ey) ** 2 + w[g] ** 2) - minor)
        out[g] = np.minimum(ends[0], ends[1])
        return out
    return d_ring


class CellLattice:
    """Worley (cellular) noise on a jittered lattice: one random seed per cell, precomputed.

    :meth:`walls` returns the distance in mm from a point to the bisector wall between its two
    nearest seeds, so ``walls < septum / 2`` draws bony septa of constant thickness between mastoid
    air cells, and a per-cell random number (to leave some cells filled with bone). Only the 27
    neighbouring cells are searched; the seeds are gathered from a table, not hashed per point.
    """

    def __init__(self, lo, hi, cell_mm: float, rng: np.random.Generator) -> None:
        self.cell = float(cell_mm)
        self.lo = np.asarray(lo, dtype=np.float64) - 2 * self.cell
        n = np.ceil((np.asarray(hi, dtype=np.float64) + 2 * self.cell - self.lo) / self.cell).astype(int) + 1
        self.n = n
        jitter = rng.uniform(0.1, 0.9, size=(*n, 3))
        grid = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1)
        self.seeds = ((grid + jitter) * self.cell + self.lo).astype(np.float32).reshape(-1, 3)
        self.ids = rng.uniform(0.0, 1.0, size=int(np.prod(n))).astype(np.float32)

    def walls(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance to the nearest cell wall in mm, random id in [0, 1) of the point's cell)."""
        n = self.n
        ci = [np.clip(np.floor((c - np.float32(self.lo[a])) / np.float32(self.cell)).astype(np.int32), 1, n[a] - 2)
              for a, c in enumerate((x, y, z))]
        d1 = np.full(x.shape, np.inf, dtype=np.float32)
        d2 = np.full(x.shape, np.inf, dtype=np.float32)
        best = np.zeros(x.shape, dtype=np.int64)
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                for oz in (-1, 0, 1):
                    flat = ((ci[0] + ox) * n[1] + (ci[1] + oy)) * n[2] + (ci[2] + oz)
                    s = self.seeds[flat]
                    d = (x - s[:, 0]) ** 2 + (y - s[:, 1]) ** 2 + (z - s[:, 2]) ** 2
                    closer = d < d1
                    d2 = np.where(closer, d1, np.minimum(d2, d))
                    best = np.where(closer, flat, best)
                    d1 = np.where(closer, d, d1)
        r1, r2 = np.sqrt(d1), np.sqrt(d2)
        # Distance to the bisector: (d2 - d1) / (2 |s2 - s1|), with |s2 - s1| approximated by r1 + r2.
        return ((d2 - d1) / (2.0 * (r1 + r2) + 1e-6)).astype(np.float32), self.ids[best]


def overlaps(lo: np.ndarray, hi: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray) -> bool:
    """Whether two axis-aligned boxes intersect (used to skip shapes far from a block of points)."""
    return bool(np.all(lo <= box_hi) and np.all(hi >= box_lo))
