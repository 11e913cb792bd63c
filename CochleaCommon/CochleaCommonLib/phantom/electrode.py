"""A cochlear-implant electrode array in the scala tympani, inserted through the round window.

Why a centreline model: an array is a silicone carrier along a smooth path with platinum contacts
at known arc lengths, so the ground truth (contact centres, insertion angle of each contact) and
the rendered metal come from the same curve. The path lies in the scala tympani at the height of
its centre: hugging the lateral wall (straight, lateral-wall arrays) or the modiolus (pre-curved,
perimodiolar arrays); it leaves the cochlea through the round window and its niche, and the lead
runs through the middle ear towards a mastoidectomy.

Insertion angle of a contact: its angle about the modiolar axis, measured from the round window
(0 deg) towards the apex in the consensus cochlear coordinate system, unwrapped along the array;
the angular insertion depth (AID) is the angle of the most apical contact. Contacts are numbered
from apical (1) to basal, as in the contacts ``.fcsv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..points import PointList
from .anatomy import Scene
from .params import PhantomParams

STEP_MM = 0.05


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at equal arc-length steps; returns (points, arc length of each)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    keep = np.concatenate([[True], seg > 1e-9])
    points, s = points[keep], s[keep]
    grid = np.arange(0.0, s[-1], step)
    out = np.stack([np.interp(grid, s, points[:, a]) for a in range(3)], axis=1)
    return out, grid


class Electrode:
    """The array of one post-operative case (geometry in the ear frame, truth in world RAS)."""

    def __init__(self, p: PhantomParams, scene: Scene) -> None:
        self.p = p
        self.scene = scene
        ear = scene.ear
        c = ear.cochlea
        rng = np.random.default_rng(np.random.SeedSequence([p.seed, 0xE1EC]))
        theta_ins = np.radians(p.insertion_angle_deg)
        # Intracochlear path, from the round window (theta = 0) to beyond the apical contact.
        tip_extra_mm = 0.3 + p.contact_length_mm / 2.0
        r_path = float(c.table("r_c", np.array([theta_ins]))[0])
        theta_tip = theta_ins + tip_extra_mm / max(r_path * 0.8, 0.3)
        t = np.linspace(0.0, theta_tip, 1500)
        ar, az, wp = c.table("ar", t), c.table("az", t), c.table("wp", t)
        w_st = 0.5 * (-az + wp)
        half_h = 0.5 * (az + wp)
        half_w = ar * np.sqrt(np.clip(1.0 - (w_st / np.maximum(az, 1e-3)) ** 2, 0.0, 1.0))
        taper = np.clip(t / max(theta_tip, 1e-3), 0.0, 1.0)
        radius = p.carrier_radius_mm * (1.0 - 0.4 * taper)
        radius = np.minimum(radius, 0.8 * np.minimum(half_w, half_h))
        side = 1.0 if p.electrode_path == "lateral" else -1.0
        blend = np.clip(t / np.radians(40.0), 0.0, 1.0)
        u = side * np.maximum(half_w - radius - 0.05, 0.0) * blend
        inside = c.centreline(t, u=u, w=w_st)  # cochlear frame, round window -> tip
        inside_ear = ear.to_ear(inside)
        # Outside: back through the round-window niche, across the middle ear, to the mastoid.
        me = ear.me_center
        outside_ear = np.array([
            ear.rw + ear.rw_normal * 0.4,
            ear.niche_mid,
            ear.niche_end,
            me + np.array([1.2, -3.0, 1.5]),
            me + np.array([4.0, -9.0, 4.0]) + rng.uniform(-1, 1, 3),
            me + np.array([9.0, -20.0, 9.0]) + rng.uniform(-2, 2, 3),
        ])
        path = np.concatenate([inside_ear[::-1], outside_ear])  # tip -> lead
        self.path_ear, self.s = _resample(path, STEP_MM)
        n_inside = _resample(inside_ear[::-1], STEP_MM)[1][-1]
        self.s_round_window = float(n_inside)
        r_in = np.interp(self.s, np.linspace(0, n_inside, len(radius)), radius[::-1])
        lead = np.minimum(0.5, p.carrier_radius_mm + 0.1 * (self.s - n_inside))  # the lead thickens outside
        self.radius = np.where(self.s <= n_inside, r_in, lead)
        # Contacts: the apical one at the insertion angle, then evenly spaced towards the base.
        n = int(p.n_contacts)
        rev = inside_ear[::-1]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(rev, axis=0), axis=1))])
        s1 = float(np.interp(theta_ins, t, arc[::-1]))  # arc length from the tip to the insertion angle
        room = max(n_inside - s1 - 0.3, 1.0)
        spacing = float(np.clip(rng.uniform(0.75, 1.0) * room / max(n - 1, 1), 0.5, 2.4))
        self.contact_spacing_mm = spacing
        self.s_contacts = s1 + spacing * np.arange(n)
        self._theta_path = self._unwrapped_angles()

    def _unwrapped_angles(self) -> np.ndarray:
        """Angle (deg) of every path sample about the modiolar axis, 0 at the round window."""
        pc = self.path_ear @ self.scene.ear.R  # ear -> cochlear frame
        ang = np.unwrap(np.arctan2(pc[:, 1], pc[:, 0])[::-1])[::-1]  # unwrap from the lead end
        ref = np.interp(self.s_round_window, self.s, ang)
        return np.degrees(ang - ref)

    # --- truth ------------------------------------------------------------------------------------
    def _world(self, pts_ear: np.ndarray) -> np.ndarray:
        m = self.scene.ear_to_world()
        return pts_ear @ m[:3, :3].T + m[:3, 3]

    def contact_positions_world(self) -> np.ndarray:
        pts = np.stack([np.interp(self.s_contacts, self.s, self.path_ear[:, a]) for a in range(3)], axis=1)
        return self._world(pts)

    def contact_angles_deg(self) -> np.ndarray:
        return np.interp(self.s_contacts, self.s, self._theta_path)

    def contact_points(self) -> PointList:
        """Contacts ordered apical (E1) to basal, with insertion angles in the descriptions."""
        angles = self.contact_angles_deg()
        inside = self.s_contacts <= self.s_round_window
        desc = [f"insertion angle {a:.1f} deg; {'intracochlear' if i else 'extracochlear'}"
                for a, i in zip(angles, inside)]
        return PointList(positions_ras=self.contact_positions_world(),
                         labels=[f"E{i + 1}" for i in range(len(angles))], name="Electrode contacts",
                         descriptions=desc)

    def record(self) -> dict[str, Any]:
        angles = self.contact_angles_deg()
        return {
            "path": self.p.electrode_path,
            "n_contacts": int(self.p.n_contacts),
            "contact_spacing_mm": self.contact_spacing_mm,
            "contact_length_mm": self.p.contact_length_mm,
            "carrier_radius_mm": self.p.carrier_radius_mm,
            "angular_insertion_depth_deg": float(angles[0]),
            "order": "apical to basal (E1 is the most apical contact)",
            "contacts": [
                {"label": f"E{i + 1}", "ras": pos.tolist(), "insertion_angle_deg": float(a),
                 "intracochlear": bool(s <= self.s_round_window)}
                for i, (pos, a, s) in enumerate(zip(self.contact_positions_world(), angles, self.s_contacts))
            ],
        }

    # --- rendering ------------------------------------------------------------------------------
    def fractions(self, shape_ijk, ijk_to_ras: np.ndarray, sub: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Metal and silicone volume fractions (float32, KJI) on the image grid."""
        ni, nj, nk = shape_ijk
        metal = np.zeros((nk, nj, ni), dtype=np.float32)
        silicone = np.zeros((nk, nj, ni), dtype=np.float32)
        path_w = self._world(self.path_ear)
        inv = np.linalg.inv(ijk_to_ras)
        ijk = path_w @ inv[:3, :3].T + inv[:3, 3]
        spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
        reach = int(np.ceil(0.6 / spacing.min())) + 1
        base = np.floor(ijk + 0.5).astype(np.int64)
        offs = np.stack(np.meshgrid(*[np.arange(-reach, reach + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        dims = np.array([ni, nj, nk])

        def voxels_near(samples: np.ndarray) -> np.ndarray:
            c = (samples[:, None, :] + offs[None]).reshape(-1, 3)
            c = c[np.all((c >= 0) & (c < dims), axis=1)]
            return np.unique((c[:, 2] * nj + c[:, 1]) * ni + c[:, 0])

        cand = voxels_near(base[::2])
        if cand.size == 0:
            return metal, silicone
        off = (np.arange(sub) + 0.5) / sub - 0.5
        so = np.stack(np.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3)
        n_sub = so.shape[0]
        d_min = np.full((cand.size, n_sub), np.inf)
        s_at = np.zeros((cand.size, n_sub))
        piece, overlap = 40, int(np.ceil(0.7 / STEP_MM))
        m3, t3 = ijk_to_ras[:3, :3], ijk_to_ras[:3, 3]
        for a in range(0, len(path_w), piece):
            near = voxels_near(base[a:a + piece:2])
            if near.size == 0:
                continue
            rows = np.searchsorted(cand, near)
            vox = np.stack([near % ni, (near // ni) % nj, near // (ni * nj)], axis=1)
            pts = ((vox[:, None, :] + so[None]) @ m3.T + t3).reshape(-1, 3)
            lo_i, hi_i = max(0, a - overlap), min(len(path_w), a + piece + overlap)
            seg = path_w[lo_i:hi_i]
            d2 = ((pts[:, None, :] - seg[None]) ** 2).sum(axis=2)
            j = d2.argmin(axis=1)
            dm = np.sqrt(d2[np.arange(len(pts)), j]).reshape(-1, n_sub)
            sm = self.s[lo_i + j].reshape(-1, n_sub)
            better = dm < d_min[rows]
            d_min[rows] = np.where(better, dm, d_min[rows])
            s_at[rows] = np.where(better, sm, s_at[rows])
        d_min, s_at = d_min.ravel(), s_at.ravel()
        r_at = np.interp(s_at, self.s, self.radius)
        carrier = d_min <= r_at
        in_contact = np.zeros(d_min.size, dtype=bool)
        half = self.p.contact_length_mm / 2.0
        for sc in self.s_contacts:
            in_contact |= np.abs(s_at - sc) <= half
        is_metal = (in_contact & (d_min <= r_at + 0.02)) | ((d_min <= 0.06) & (s_at >= self.s_contacts[0]))
        f_metal = is_metal.reshape(-1, n_sub).mean(axis=1)
        f_sil = (carrier & ~is_metal).reshape(-1, n_sub).mean(axis=1)
        metal.reshape(-1)[cand] = f_metal
        silicone.reshape(-1)[cand] = f_sil
        return metal, silicone
