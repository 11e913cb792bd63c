"""The temporal bone around the cochlea, placed in a posed head: every tissue as a function of position.

Frames (all right-handed RAS millimetres unless said otherwise):

* **cochlear frame** -- see :mod:`.cochlea` (consensus cochlear coordinate system).
* **ear frame** -- RAS axes of a *right* ear, origin at the Modiolus base; +x is lateral. The
  cochlea is mapped into it by an improper rotation (a right cochlea coils clockwise about its
  base-to-apex axis), and every other structure (vestibule, canals, middle ear, mastoid) is placed
  in it relative to the cochlea.
* **head frame** -- RAS, origin between the two modiolus bases. A left ear is the mirror image
  (x -> -x) of a right ear, so left/right is an exact reflection of the anatomy and its truth.
* **world** -- the scanner's RAS: the head frame turned by the head pose (within +-30 deg).

Why one evaluator for all tissues: :meth:`Scene.evaluate` returns HU and label for any array of
world points, so the renderer can sample voxel centres far from the ear and sub-voxel points near
it, and the truth (labels, landmarks) is the same function the image is drawn from.

Labels: 1 scala tympani, 2 scala vestibuli, 3 modiolus, 4 rest of the labyrinth (vestibule,
semicircular canals, the vestibular end of the scala vestibuli, oval-window niche).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import rotation_matrix
from . import shapes
from .cochlea import CochleaShape
from .params import PhantomParams

LABEL_ST, LABEL_SV, LABEL_MODIOLUS, LABEL_LABYRINTH = 1, 2, 3, 4
LABEL_NAMES = {LABEL_ST: "scala tympani", LABEL_SV: "scala vestibuli", LABEL_MODIOLUS: "modiolus",
               LABEL_LABYRINTH: "rest of labyrinth"}
HU_AIR = -1000.0
EAR_OFFSET_MM = 33.0  # lateral distance of each modiolus base from the mid-sagittal plane


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def canonical_cochlear_axes(p: PhantomParams) -> np.ndarray:
    """Columns x_c, y_c, z_c of the cochlear frame in the right-ear frame (determinant -1).

    The modiolar axis points antero-laterally and inferiorly; the round window lies postero-
    infero-laterally of the axis; the basal turn runs from the round window along the promontory.
    """
    z = _unit([0.55, 0.70, -0.45])
    lateral = _unit(np.array([1.0, 0.0, 0.0]) - z[0] * z)
    q = _unit(np.cross(z, lateral))  # postero-inferior, in the basal plane
    x = _unit(np.cos(np.radians(45)) * lateral + np.sin(np.radians(45)) * q)
    y = _unit(np.sin(np.radians(45)) * lateral - np.cos(np.radians(45)) * q)
    axes = np.stack([x, y, z], axis=1)
    if p.axis_jitter_deg:
        axes = rotation_matrix(p.axis_jitter_dir, p.axis_jitter_deg) @ axes
    return axes


@dataclass
class Torus:
    center: np.ndarray
    axes: np.ndarray
    gap_center_deg: float
    name: str


class Ear:
    """One temporal bone in its ear frame (right-ear orientation)."""

    def __init__(self, p: PhantomParams) -> None:
        self.p = p
        self.cochlea = CochleaShape(p)
        c = self.cochlea
        self.R = canonical_cochlear_axes(p)  # cochlear -> ear (columns)
        rng = np.random.default_rng(np.random.SeedSequence([p.seed, 0xEA5, p.texture_salt]))
        lm = c.landmarks()
        self.rw = self.to_ear(lm["Round Window"])
        self.rw_normal = self.R @ c.round_window_normal()
        s = p.vestibule_scale
        self.vest_semi = np.array([1.5, 2.5, 1.8]) * s
        self.vest_center = self.rw + np.array([-0.4, -1.2, 2.8]) + rng.uniform(-0.3, 0.3, 3)
        self._push_vestibule_clear()
        # Lateral surface of the promontory: the most lateral duct point of the basal turn.
        t = np.linspace(0.0, 2 * np.pi, 90)
        ring = np.concatenate([c.centreline(t, u=c.table("ar", t) * np.cos(a), w=c.table("az", t) * np.sin(a))
                               for a in np.linspace(-np.pi / 2, np.pi / 2, 7)])
        lateral_x = float((ring @ self.R.T)[:, 0].max())
        vest_lat = float(self.vest_center[0] + self.vest_semi[0])
        self.x_me = max(lateral_x + p.promontory_mm, vest_lat + 0.8)
        me_c = np.array([self.x_me + 2.2, self.rw[1] + 3.0, self.rw[2] + 2.0]) + rng.uniform(-0.4, 0.4, 3)
        self.me_center, self.me_semi = me_c, np.array([2.2, 5.5, 5.5])
        self.attic_center, self.attic_semi = me_c + np.array([0.8, -0.8, 5.2]), np.array([3.0, 3.8, 2.8])
        self.antrum_center = me_c + np.array([2.5, -9.0, 5.0]) + rng.uniform(-1, 1, 3)
        self.eac_start = me_c + np.array([2.0, 0.3, -0.3])
        self.eac_dir = _unit([1.0, 0.15, 0.12])
        self.eac_radius = float(rng.uniform(3.3, 4.2))
        # Round-window niche: leaves the membrane along its normal, then bends towards the middle ear.
        self.niche_radius = float(rng.uniform(0.7, 0.9))
        self.niche_mid = self.rw + self.rw_normal * 0.6
        target = np.array([self.x_me + 1.0, self.niche_mid[1] + 0.3, self.niche_mid[2] - 0.2])
        self.niche_end = target
        # Oval window: channel from the vestibule's lateral wall to the middle ear, closed by the footplate.
        self.ow_center = np.array([self.x_me, self.vest_center[1] + 0.3, self.vest_center[2] + 0.3])
        self.sv_open_start = self.to_ear(c.centreline(np.array([0.3]), w=0.45 * c.table("az", np.array([0.3])))[0])
        # Ossicles (malleus head and incus body in the attic; manubrium, long process, stapes).
        a = self.attic_center
        self.malleus_head = (a + np.array([0.3, 1.3, -0.6]), np.array([1.0, 1.1, 1.5]))
        self.incus_body = (a + np.array([0.2, -1.2, -0.4]), np.array([1.0, 1.4, 1.2]))
        self.manubrium = (a + np.array([0.6, 1.3, -1.8]), me_c + np.array([1.9, 0.8, -1.8]))
        self.long_process = (a + np.array([0.0, -1.6, -1.2]), self.ow_center + np.array([1.6, 0.0, 0.9]))
        self.stapes = (self.ow_center + np.array([1.6, 0.0, 0.9]), self.ow_center + np.array([0.15, 0.0, 0.0]))
        # Internal auditory canal: from the fundus below the modiolus, medially to the posterior fossa.
        self.iac_start = self.to_ear(np.array([0.0, 0.0, c.z_lo + 0.2]))
        self.iac_dir = _unit(-0.45 * self.R[:, 2] + np.array([-1.0, -0.25, 0.05]))
        self.iac_end = self.iac_start + self.iac_dir * 14.0
        self.canals = self._canals(rng)
        self.mastoid_center = me_c + np.array([4.0, -13.0, 1.0])
        self.mastoid_semi = np.array([11.0, 12.0, 14.0]) * (0.55 + 0.45 * p.pneumatisation)
        self.petrous_axis = _unit([-0.72, 0.69, 0.0])
        self.petrous_axes = np.stack([self.petrous_axis, _unit([0.69, 0.72, 0.0]), [0, 0, 1.0]], axis=1)
        self.petrous_center = self.petrous_axis * 7.0 + np.array([1.0, -1.0, 0.5])
        self.salt = int(p.texture_salt)
        self._box = self._inner_box()
        self._setup_boxes()

    # --- frames -------------------------------------------------------------------------------
    def to_ear(self, pts_c: np.ndarray) -> np.ndarray:
        """Cochlear-frame points (N, 3) or (3,) to the ear frame."""
        return np.asarray(pts_c) @ self.R.T

    def _push_vestibule_clear(self) -> None:
        """Move the vestibule away from the cochlear duct until 0.6 mm of bone separates them."""
        c = self.cochlea
        u = np.random.default_rng(0).normal(size=(600, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        direction = _unit(self.vest_center - self.rw + np.array([0.0, -0.5, 0.5]))
        for _ in range(30):
            pts = self.vest_center + u * (self.vest_semi + 0.6)
            pc = pts @ self.R  # ear -> cochlear
            ev = c.evaluate(pc[:, 0].astype(np.float32), pc[:, 1].astype(np.float32), pc[:, 2].astype(np.float32))
            if not ev["lumen"].any():
                return
            self.vest_center = self.vest_center + 0.3 * direction

    def _canals(self, rng: np.random.Generator) -> list[Torus]:
        p = self.p
        v = self.vest_center
        out = []
        plans = (
            ("lateral", _unit([0.0, -0.45, 0.89]), _unit([0.55, -0.83, 0.05])),
            ("superior", _unit([-0.72, 0.69, 0.0]), _unit([0.25, 0.25, 1.0])),
            ("posterior", _unit([0.69, 0.72, 0.0]), _unit([0.72, -0.69, 0.25])),
        )
        for name, normal, outward in plans:
            normal = rotation_matrix(rng.normal(size=3), rng.uniform(0, 6)) @ normal
            outward = _unit(outward - (outward @ normal) * normal)
            center = v + outward * (p.scc_radius_mm + 0.3)
            e1 = -outward  # local u axis points from the ring centre back to the vestibule
            e2 = np.cross(normal, e1)
            out.append(Torus(center=center, axes=np.stack([e1, e2, normal], axis=1), gap_center_deg=0.0, name=name))
        return out

    def _inner_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Ear-frame bounding box of the labyrinth, its capsule and the round-window niche."""
        c = self.cochlea
        r = float(c.r_lw.max()) + self.p.otic_capsule_mm + 0.5
        corners = np.array([[sx * r, sy * r, z] for sx in (-1, 1) for sy in (-1, 1)
                            for z in (c.z_lo - 1.5, float(c.z_c.max()) + 2.0)])
        pts = [self.to_ear(corners), (self.vest_center - self.vest_semi - 2.5)[None],
               (self.vest_center + self.vest_semi + 2.5)[None], self.niche_end[None] + 1.0, self.niche_end[None] - 1.0]
        for t in self.canals:
            ext = self.p.scc_radius_mm + self.p.scc_lumen_mm + 2.0
            pts.append((t.center - ext)[None])
            pts.append((t.center + ext)[None])
        allp = np.concatenate(pts)
        return allp.min(axis=0), allp.max(axis=0)

    def inner_box_corners(self) -> np.ndarray:
        lo, hi = self._box
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    # --- evaluation ---------------------------------------------------------------------------
    def _setup_boxes(self) -> None:
        """Axis-aligned ear-frame boxes of the structures, to skip those far from a block of points."""
        p = self.p

        def ell(c, semi):
            r = float(np.max(semi))
            return np.asarray(c) - r, np.asarray(c) + r

        def cap(a, b, r):
            return np.minimum(a, b) - r, np.maximum(a, b) + r

        self.tb_parts = [
            ("petrous", self.petrous_center, (28.0, 12.5, 11.0), self.petrous_axes, 2.0),
            ("mastoid", self.mastoid_center + np.array([0.0, 2.0, 0.0]), (16.0, 17.0, 18.0), None, 3.0),
            ("tympanic", self.me_center + np.array([3.0, 0.0, 2.0]), (11.0, 14.0, 15.0), None, 3.0),
        ]
        self.box_tb = (np.min([ell(c, s)[0] for _, c, s, _, _ in self.tb_parts], axis=0),
                       np.max([ell(c, s)[1] for _, c, s, _, _ in self.tb_parts], axis=0))
        self.box_mastoid = ell(self.mastoid_center, self.mastoid_semi)
        self.air_parts = [
            ("me", lambda x, y, z: shapes.ellipsoid(x, y, z, self.me_center, self.me_semi, power=3.0),
             ell(self.me_center, self.me_semi)),
            ("attic", lambda x, y, z: shapes.ellipsoid(x, y, z, self.attic_center, self.attic_semi, power=2.5),
             ell(self.attic_center, self.attic_semi)),
            ("aditus", lambda x, y, z: shapes.capsule(x, y, z, self.attic_center, self.antrum_center, 1.6),
             cap(self.attic_center, self.antrum_center, 1.6)),
            ("antrum", lambda x, y, z: shapes.ellipsoid(x, y, z, self.antrum_center, (3.5, 4.0, 3.5)),
             ell(self.antrum_center, (3.5, 4.0, 3.5))),
            ("eac", lambda x, y, z: shapes.capsule(x, y, z, self.eac_start, self.eac_start + 40.0 * self.eac_dir,
                                                   self.eac_radius),
             cap(self.eac_start, self.eac_start + 40.0 * self.eac_dir, self.eac_radius)),
        ]
        oss = [self.malleus_head[0], self.incus_body[0], *self.manubrium, *self.long_process, *self.stapes]
        self.box_ossicles = (np.min(oss, axis=0) - 1.6, np.max(oss, axis=0) + 1.6)
        self.box_ear = (self.box_tb[0] - 1.0, np.maximum(self.box_tb[1], self.eac_start + 40.0 * self.eac_dir) + 5.0)
        wave_rng = np.random.default_rng(np.random.SeedSequence([p.seed, 0x3A7E]))
        self.waves = []
        for _ in range(4):
            k = wave_rng.normal(size=3)
            k *= 2 * np.pi / wave_rng.uniform(10.0, 25.0) / np.linalg.norm(k)
            self.waves.append((*k, wave_rng.uniform(0, 2 * np.pi), wave_rng.uniform(0.8, 2.0)))
        self.mastoid_cells = shapes.CellLattice(self.box_mastoid[0], self.box_mastoid[1], p.mastoid_cell_mm,
                                                np.random.default_rng(np.random.SeedSequence([p.seed, 0xCE11])))
        seeds = self.mastoid_cells.seeds
        d_seed = shapes.ellipsoid(seeds[:, 0], seeds[:, 1], seeds[:, 2], self.mastoid_center, self.mastoid_semi)
        depth = np.clip(-d_seed / 4.0, 0.0, 1.0)
        chance = p.pneumatisation * (0.35 + 0.65 * depth)
        self.mastoid_cells.ids = ((d_seed <= 0) & (self.mastoid_cells.ids < chance)).astype(np.float32)

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, hu: np.ndarray, label: np.ndarray) -> None:
        """Paint this ear's tissues into ``hu`` and ``label`` (in place) at ear-frame points."""
        p = self.p
        if x.size == 0:
            return
        plo = np.array([x.min(), y.min(), z.min()])
        phi = np.array([x.max(), y.max(), z.max()])
        if not shapes.overlaps(plo, phi, *self.box_ear):
            return
        bone = np.zeros(x.shape, dtype=bool)
        if shapes.overlaps(plo, phi, *self.box_tb):
            d_tb = np.full(x.shape, np.inf, dtype=np.float32)
            for _name, c, semi, axes, power in self.tb_parts:
                d_tb = np.minimum(d_tb, shapes.ellipsoid(x, y, z, c, semi, axes, power=power))
            # Irregular outer surface: a few random low-frequency waves (cheap, smooth, seeded).
            for (kx, ky, kz, ph, amp) in self.waves:
                d_tb += np.float32(amp) * np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z
                                                 + np.float32(ph))
            bone = d_tb <= 0
            hu[bone] = p.hu_bone
        # Otic capsule and labyrinth (only near the inner ear).
        lo, hi = self._box
        protect = np.zeros(x.shape, dtype=bool)
        inner = None
        near = np.zeros(0, dtype=np.int64)
        if shapes.overlaps(plo, phi, lo, hi):
            near = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2])
                                  & (z <= hi[2]))
            if near.size:
                inner = self._labyrinth(x[near], y[near], z[near])
                protect[near] = inner["capsule"]
                hu[near[inner["capsule"]]] = (p.hu_bone + p.capsule_extra_hu)
        # Mastoid air cells with bony septa, outside the otic capsule. Whole cells are air or bone
        # (decided per cell seed), so the pneumatised region has the natural polyhedral outline.
        if p.pneumatisation > 0.05 and shapes.overlaps(plo, phi, *self.box_mastoid):
            cells = np.flatnonzero(bone & ~protect)
            if cells.size:
                wall, air_cell = self.mastoid_cells.walls(x[cells], y[cells], z[cells])
                air = (wall > 0.5 * p.septum_mm) & (air_cell > 0.5)
                hu[cells[air]] = HU_AIR
        # Middle-ear air: tympanic cavity, attic, aditus and antrum, external auditory canal.
        d_air = np.full(x.shape, np.inf, dtype=np.float32)
        for _name, fn, (blo, bhi) in self.air_parts:
            if shapes.overlaps(plo, phi, blo, bhi):
                d_air = np.minimum(d_air, fn(x, y, z))
        air = (d_air <= 0) & ~protect
        hu[air] = HU_AIR
        # Ossicles: dense little bones inside the air.
        if shapes.overlaps(plo, phi, *self.box_ossicles):
            cand = np.flatnonzero(d_air <= 0.5)
            if cand.size:
                ox, oy, oz = x[cand], y[cand], z[cand]
                d_oss = np.minimum(shapes.ellipsoid(ox, oy, oz, *self.malleus_head),
                                   shapes.ellipsoid(ox, oy, oz, *self.incus_body))
                d_oss = np.minimum(d_oss, shapes.capsule(ox, oy, oz, *self.manubrium, 0.4, 0.25))
                d_oss = np.minimum(d_oss, shapes.capsule(ox, oy, oz, *self.long_process, 0.4, 0.3))
                d_oss = np.minimum(d_oss, shapes.capsule(ox, oy, oz, *self.stapes, 0.25))
                hu[cand[d_oss <= 0]] = 0.9 * p.hu_bone
        if inner is not None:
            self._paint_labyrinth(near, inner, hu, label)

    def _labyrinth(self, x, y, z) -> dict[str, np.ndarray]:
        """Classify points near the inner ear (ear frame) into the labyrinth structures."""
        p = self.p
        R = self.R.astype(np.float32)
        xc = x * R[0, 0] + y * R[1, 0] + z * R[2, 0]
        yc = x * R[0, 1] + y * R[1, 1] + z * R[2, 1]
        zc = x * R[0, 2] + y * R[1, 2] + z * R[2, 2]
        ev = self.cochlea.evaluate(xc, yc, zc, capsule_mm=p.otic_capsule_mm)
        d_vest = shapes.ellipsoid(x, y, z, self.vest_center, self.vest_semi)
        d_lab = d_vest
        d_lab = np.minimum(d_lab, shapes.capsule(x, y, z, self.sv_open_start, self.vest_center, 0.55))
        reach = p.scc_radius_mm + p.scc_lumen_mm + p.otic_capsule_mm + 0.2
        for t in self.canals:
            sel = np.flatnonzero((x - t.center[0]) ** 2 + (y - t.center[1]) ** 2 + (z - t.center[2]) ** 2 < reach**2)
            if sel.size:
                d_lab[sel] = np.minimum(d_lab[sel], shapes.torus_arc(x[sel], y[sel], z[sel], t.center, t.axes,
                                                                     p.scc_radius_mm, p.scc_lumen_mm,
                                                                     t.gap_center_deg, 70.0))
        ow_start = self.vest_center + np.array([self.vest_semi[0] * 0.5, 0.3, 0.3])
        d_ow = shapes.capsule(x, y, z, ow_start, self.ow_center - np.array([0.35, 0, 0]), 0.8)
        d_lab = np.minimum(d_lab, d_ow)
        ev["labyrinth"] = (d_lab <= 0) & ~ev["lumen"]
        ev["capsule"] |= d_lab <= p.otic_capsule_mm * 0.8
        ev["footplate"] = shapes.capsule(x, y, z, self.ow_center - np.array([0.3, 0, 0]),
                                         self.ow_center + np.array([0.05, 0, 0]), 0.75) <= 0
        ev["iac"] = shapes.capsule(x, y, z, self.iac_start + self.iac_dir * p.iac_radius_mm, self.iac_end,
                                   p.iac_radius_mm) <= 0
        niche = np.minimum(shapes.capsule(x, y, z, self.rw + self.rw_normal * self.niche_radius, self.niche_mid,
                                          self.niche_radius),
                           shapes.capsule(x, y, z, self.niche_mid, self.niche_end, self.niche_radius + 0.1))
        # Flat membrane: the niche starts exactly at the plane of the round-window membrane.
        n = self.rw_normal.astype(np.float32)
        dx, dy, dz = x - self.rw[0], y - self.rw[1], z - self.rw[2]
        rel = dx * n[0] + dy * n[1] + dz * n[2]
        radial = np.sqrt(np.maximum(dx * dx + dy * dy + dz * dz - rel * rel, 0.0))
        cyl = (rel >= 0) & (rel <= 0.7) & (radial <= self.niche_radius)
        ev["niche"] = ((niche <= 0) | cyl) & ~ev["lumen"] & (rel >= 0)
        return ev

    def _paint_labyrinth(self, near: np.ndarray, ev: dict[str, np.ndarray], hu: np.ndarray, label: np.ndarray) -> None:
        p = self.p
        mod = near[ev["modiolus"]]
        hu[mod] = p.hu_modiolus
        label[mod] = LABEL_MODIOLUS
        hu[near[ev["nerve"]]] = p.hu_soft
        iac = near[ev["iac"] & ~ev["lumen"] & ~ev["labyrinth"]]
        hu[iac] = p.hu_fluid + 10.0
        lab = near[ev["labyrinth"]]
        hu[lab] = p.hu_fluid
        label[lab] = LABEL_LABYRINTH
        st, sv = near[ev["st"]], near[ev["sv"]]
        hu[st] = p.hu_fluid
        hu[sv] = p.hu_fluid
        label[st] = LABEL_ST
        label[sv] = LABEL_SV
        hu[near[ev["osl"]]] = p.hu_modiolus + 200.0
        hu[near[ev["niche"]]] = HU_AIR
        hu[near[ev["footplate"] & ~ev["labyrinth"]]] = 0.9 * p.hu_bone


class Scene:
    """A posed head with one (or both) temporal bones: world point -> HU, label."""

    def __init__(self, p: PhantomParams, ear: Ear | None = None) -> None:
        self.p = p
        self.ear = ear if ear is not None else Ear(p)
        mirror = np.diag([-1.0, 1.0, 1.0]) if p.side == "left" else np.eye(3)
        side_sign = -1.0 if p.side == "left" else 1.0
        # ear -> head: x_head = M (x_ear + offset)
        self.ear_to_head = np.eye(4)
        self.ear_to_head[:3, :3] = mirror
        self.ear_to_head[:3, 3] = [side_sign * EAR_OFFSET_MM, 0.0, 0.0]
        self.other_ear_to_head = np.eye(4)
        self.other_ear_to_head[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ mirror
        self.other_ear_to_head[:3, 3] = [-side_sign * EAR_OFFSET_MM, 0.0, 0.0]
        self.head_to_world = np.eye(4)
        if p.pose_angle_deg:
            self.head_to_world[:3, :3] = rotation_matrix(p.pose_axis, p.pose_angle_deg)
        self.world_to_head = np.linalg.inv(self.head_to_world)

    # --- transforms -------------------------------------------------------------------------------
    def cochlear_to_world(self) -> np.ndarray:
        """4x4 matrix mapping the cochlear frame of the imaged ear to world RAS (may be improper)."""
        c2e = np.eye(4)
        c2e[:3, :3] = self.ear.R
        return self.head_to_world @ self.ear_to_head @ c2e

    def ear_to_world(self, other: bool = False) -> np.ndarray:
        return self.head_to_world @ (self.other_ear_to_head if other else self.ear_to_head)

    def landmarks_world(self, other: bool = False) -> dict[str, np.ndarray]:
        m = self.head_to_world @ (self.other_ear_to_head if other else self.ear_to_head)
        lm = self.ear.cochlea.landmarks()
        return {k: m[:3, :3] @ self.ear.to_ear(v) + m[:3, 3] for k, v in lm.items()}

    def inner_box_world(self, other: bool = False) -> np.ndarray:
        """World corners (8, 3) of the inner-ear box (where sub-voxel sampling is needed)."""
        m = self.ear_to_world(other)
        return self.ear.inner_box_corners() @ m[:3, :3].T + m[:3, 3]

    # --- evaluation --------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HU (float32) and label (uint8) at world RAS points given as flat float32 arrays."""
        m = self.world_to_head.astype(np.float32)
        hx = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3]
        hy = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3]
        hz = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3]
        hu, label = self._head(hx, hy, hz)
        for other in (False, True):
            e2h = self.other_ear_to_head if other else self.ear_to_head
            h2e = np.linalg.inv(e2h).astype(np.float32)
            sel = np.flatnonzero((hx > 0) == (e2h[0, 3] > 0))
            if sel.size == 0:
                continue
            ex = h2e[0, 0] * hx[sel] + h2e[0, 3]
            ey, ez = hy[sel], hz[sel]
            h_sub, l_sub = hu[sel], label[sel]
            self.ear.evaluate(ex, ey, ez, h_sub, l_sub)
            hu[sel], label[sel] = h_sub, l_sub
        return hu, label

    def _head(self, x, y, z) -> tuple[np.ndarray, np.ndarray]:
        """Head outside the temporal bones: air, skin and soft tissue, skull, brain, skull base."""
        p = self.p
        hu = np.full(x.shape, HU_AIR, dtype=np.float32)
        label = np.zeros(x.shape, dtype=np.uint8)
        d_skin = shapes.ellipsoid(x, y, z, (0.0, -8.0, 20.0), (76.0, 96.0, 100.0))
        inside = d_skin <= 0
        hu[inside] = p.hu_soft
        d_outer = shapes.ellipsoid(x, y, z, (0.0, -8.0, 20.0), (70.0, 90.0, 94.0))
        d_inner = shapes.ellipsoid(x, y, z, (0.0, -8.0, 20.0), (64.0, 84.0, 88.0))
        skull = (d_outer <= 0) & (d_inner > 0)
        hu[skull] = p.hu_bone
        # Skull base: low and tilted medially (clivus, posterior fossa), above the ear laterally (tegmen).
        lateral = np.clip((np.abs(x) - 22.0) / 16.0, 0.0, 1.0)
        base = z - (-10.0 + 0.45 * y + 20.0 * lateral * lateral * (3.0 - 2.0 * lateral))
        brain = (d_inner <= 0) & (base > 0)
        hu[brain] = p.hu_soft - 12.0
        return hu, label
