"""The cochlear spiral in its own (consensus) coordinate system: lumen, scalae, modiolus, lengths.

Cochlear frame (Verbist et al., Otol Neurotol 2010;31:722, the consensus cochlear coordinate
system): the z axis is the modiolar axis pointing from the base to the apex; the origin is the
**Modiolus base**, the foot of the perpendicular dropped from the round-window centre onto the
modiolar axis; the x axis points from the origin to the **Round Window** centre (0 deg) and
angles theta grow towards the apex. In this frame every ear is drawn the same way; a right ear is
mapped to the head with a reflection (it coils the other way round than a left ear).

Why meridional cross-sections: the lumen is defined by its cut with every half-plane through the
modiolar axis (a "mid-modiolar section"), an ellipse of half-width ``a_r(theta)`` and half-height
``a_z(theta)`` centred at radius ``r_c(theta)`` and height ``z_c(theta)``, with theta = phi + 360 k for
the turns k stacked at that azimuth phi. That makes membership a few vectorised table look-ups per
turn (fast), and the classic clinical view, the mid-modiolar section, shows exact ellipses.

* Lateral wall ``r_lw(theta)`` follows Escude et al. 2006 (radius ~ 1/(1 + theta/theta0), so that
  CDL(theta) = 2.62 A ln(1 + theta/235 deg) for theta0 = 235 deg), bent to end at a finite apical
  radius, with an elliptic modulation that sets B/A. A is measured as in the clinic: from the
  round-window centre through the modiolar axis to the opposite lateral wall; B perpendicular.
* The duct tapers exponentially from base to apex; the basilar membrane/osseous spiral lamina
  splits it at height ``w_p(theta)`` into scala tympani (towards the base, w < w_p) and scala
  vestibuli (towards the apex).
* **Helicotrema**: the lumen centre at the apical end of the spiral (theta = theta_max), inside the
  rounded apical cap of the lumen.
* **Round Window**: centre of the scala-tympani part of the basal end face of the duct (theta = 0),
  which is the round-window membrane; outside it lies the air of the round-window niche.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .params import PhantomParams

TWO_PI = 2.0 * np.pi


class CochleaShape:
    """Analytic cochlea of one case, evaluated in the cochlear frame (mm)."""

    def __init__(self, p: PhantomParams, n_table: int = 4096) -> None:
        self.p = p
        self.theta_max = np.radians(p.theta_max_deg)
        ar0, az0 = p.lumen_radial_mm, p.lumen_axial_mm
        self.ar_apex = ar0 * p.lumen_apex_ratio
        self.az_apex = az0 * p.lumen_apex_ratio
        # Rounded apical cap: the duct continues by one apical half-width of arc length while closing.
        self.r_apex = 2.0 * self.ar_apex + p.apex_gap_mm
        rc_apex = self.r_apex - self.ar_apex
        self.cap = min(np.radians(150.0), self.ar_apex / max(rc_apex, 0.05))
        t = np.linspace(0.0, self.theta_max + self.cap, n_table)
        self.theta = t
        frac = np.clip(t / self.theta_max, 0.0, 1.0)
        ar = ar0 * p.lumen_apex_ratio ** frac
        az = az0 * p.lumen_apex_ratio ** frac
        capscale = np.sqrt(np.clip(1.0 - ((t - self.theta_max) / self.cap) ** 2, 0.0, 1.0))
        capscale[t <= self.theta_max] = 1.0
        self.ar, self.az = ar * capscale, az * capscale
        self._ar_nocap, self._az_nocap = ar, az
        self.e, r0 = self._solve_shape()
        self.r_lw = self._lateral_wall(t, r0, self.e)
        self.r_c = self.r_lw - self._ar_nocap
        self.z_rise = p.height_mm - az0 - self.az_apex
        part = p.partition_base + (p.partition_apex - p.partition_base) * frac
        self.wp = part * self._az_nocap
        # Height: the round-window centre (ST centre of the basal face) is at z = 0.
        w_rw = 0.5 * (-az0 + self.wp[0])
        self.z_c = -w_rw + max(self.z_rise, 0.0) * frac ** p.height_gamma
        self.osl_tip_u = -self._ar_nocap + 2.0 * self._ar_nocap * p.osl_fraction
        self.osl_half_thickness = 0.5 * (0.14 - 0.06 * frac)
        self._modiolus_table()
        self._stack_tables()

    # --- spiral shape ------------------------------------------------------------------------
    def _lateral_wall(self, t: np.ndarray, r0: float, e: float) -> np.ndarray:
        p = self.p
        th0 = np.radians(p.spiral_decay_deg)
        k_end = 1.0 / (1.0 + self.theta_max / th0)
        f = (1.0 / (1.0 + np.minimum(t, self.theta_max) / th0) - k_end) / (1.0 - k_end)
        base = self.r_apex + (r0 - self.r_apex) * f
        fade = np.clip(1.0 - t / self.theta_max, 0.0, 1.0)
        return base * (1.0 + e * np.cos(2.0 * t) * fade)

    def _ab(self, r0: float, e: float) -> tuple[float, float]:
        ang = np.array([0.0, np.pi / 2, np.pi, 1.5 * np.pi])
        r = self._lateral_wall(ang, r0, e)
        a = (r[0] - self.p.lumen_radial_mm) + r[2]
        return a, r[1] + r[3]

    def _solve_shape(self) -> tuple[float, float]:
        """Find the basal radius r0 and ellipticity e giving the requested A value and B/A ratio."""
        p = self.p

        def r0_for(e: float) -> float:
            a1, _ = self._ab(1.0, e)
            a2, _ = self._ab(2.0, e)
            return 1.0 + (p.a_value_mm - a1) / (a2 - a1)  # A is linear in r0

        def ratio(e: float) -> float:
            a, b = self._ab(r0_for(e), e)
            return b / a

        lo, hi = -0.35, 0.35
        if not (ratio(hi) <= p.b_ratio <= ratio(lo)):
            exc = InvalidInputError(
                f"Phantom parameter b_ratio={p.b_ratio:g} cannot be reached with A={p.a_value_mm:g} mm and "
                f"spiral_decay_deg={p.spiral_decay_deg:g}: possible {ratio(hi):.2f}..{ratio(lo):.2f}."
            )
            exc.parameter = "b_ratio"  # type: ignore[attr-defined]
            exc.involved = ("b_ratio", "a_value_mm", "spiral_decay_deg")  # type: ignore[attr-defined]
            raise exc
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if ratio(mid) > p.b_ratio:
                lo = mid
            else:
                hi = mid
        e = 0.5 * (lo + hi)
        return e, r0_for(e)

    def _modiolus_table(self) -> None:
        """Radius of the modiolus at each height: the inner wall of the duct turns at that height."""
        zs = np.linspace(self.z_c.min() - 1.5, self.z_c.max() + 1.5, 256)
        inner = np.full(zs.shape, np.inf)
        keep = self.theta <= self.theta_max
        for zc, rc, ar, az in zip(self.z_c[keep][::4], self.r_c[keep][::4], self._ar_nocap[keep][::4],
                                  self._az_nocap[keep][::4]):
            d = (zs - zc) / az
            m = np.abs(d) < 1.0
            inner[m] = np.minimum(inner[m], rc - ar * np.sqrt(1.0 - d[m] ** 2))
        basal = self.theta <= TWO_PI
        self.z_lo = float((self.z_c[basal] - self._az_nocap[basal]).min()) - 0.3
        self.z_hi = float(self.z_c[np.searchsorted(self.theta, self.theta_max)])
        cap_r = float(np.interp(np.pi, self.theta, self.r_c - self._ar_nocap))
        finite = np.isfinite(inner)
        r = np.where(finite, inner, np.nan)
        if finite.any():
            idx = np.arange(zs.size)
            r = np.interp(idx, idx[finite], r[finite])
        r = np.minimum(np.clip(r - 0.02, 0.1, None), cap_r)
        r[(zs < self.z_lo)] = cap_r
        # Taper to the apex: the modiolus ends in a point a little above the last turn's centre.
        top = self.z_hi + 0.5 * self.az_apex
        r = np.where(zs > self.z_hi, r * np.clip((top - zs) / (top - self.z_hi), 0.0, 1.0), r)
        self.mod_z, self.mod_r = zs, np.convolve(np.pad(r, 3, mode="edge"), np.ones(7) / 7, mode="valid")

    def check(self) -> None:
        """Raise :class:`InvalidInputError` if neighbouring turns would touch (no bony septum)."""
        p = self.p
        if self.z_rise <= 0.3:
            exc = InvalidInputError(
                f"Phantom parameter height_mm={p.height_mm:g} is too small for a basal duct of height "
                f"{2 * p.lumen_axial_mm:g} mm: allowed {2 * p.lumen_axial_mm * (1 + p.lumen_apex_ratio) / 2 + 0.3:.2f}"
                f"..{6.5:g} mm for these lumen sizes."
            )
            exc.parameter = "height_mm"  # type: ignore[attr-defined]
            exc.involved = ("height_mm", "lumen_axial_mm", "lumen_apex_ratio")  # type: ignore[attr-defined]
            raise exc
        if np.any(self.r_c[self.theta <= self.theta_max] - self._ar_nocap[self.theta <= self.theta_max] < 0.05):
            exc = InvalidInputError(f"Phantom parameter a_value_mm={p.a_value_mm:g} is too small for the duct width.")
            exc.parameter = "a_value_mm"  # type: ignore[attr-defined]
            exc.involved = ("a_value_mm", "lumen_radial_mm")  # type: ignore[attr-defined]
            raise exc
        t = self.theta[self.theta <= self.theta_max - TWO_PI]
        if t.size:
            f = lambda arr, x: np.interp(x, self.theta, arr)  # noqa: E731
            sep = 0.12  # thinnest bony septum between turns (mm)
            dr = f(self.r_c, t) - f(self.r_c, t + TWO_PI)
            dz = f(self.z_c, t + TWO_PI) - f(self.z_c, t)
            sr = f(self.ar, t) + f(self.ar, t + TWO_PI) + sep
            sz = f(self.az, t) + f(self.az, t + TWO_PI) + sep
            clearance = (dr / sr) ** 2 + (dz / sz) ** 2
            if clearance.min() < 1.0:
                worst = float(np.degrees(t[np.argmin(clearance)]))
                exc = InvalidInputError(
                    f"Phantom parameter height_mm={p.height_mm:g} with turns={p.turns:g}: neighbouring turns of "
                    f"the cochlear duct would touch near {worst:.0f} deg. Use a larger height (allowed up to "
                    f"6.5 mm), fewer turns or a narrower duct (lumen_radial_mm / lumen_axial_mm)."
                )
                exc.parameter = "height_mm"  # type: ignore[attr-defined]
                exc.involved = ("height_mm", "turns")  # type: ignore[attr-defined]
                raise exc

    # --- evaluation ----------------------------------------------------------------------------
    def centreline(self, theta: np.ndarray, u: float | np.ndarray = 0.0, w: float | np.ndarray = 0.0) -> np.ndarray:
        """Points (N, 3) in the duct cross-section at angles ``theta`` (rad), offset by (u, w) from the centre."""
        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        r = np.interp(theta, self.theta, self.r_c) + u
        z = np.interp(theta, self.theta, self.z_c) + w
        return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)

    def table(self, name: str, theta: np.ndarray) -> np.ndarray:
        """Interpolate one of the per-angle tables (``r_c``, ``z_c``, ``ar``, ``az``, ``wp``, ``r_lw``)."""
        return np.interp(theta, self.theta, getattr(self, name))

    def _stack_tables(self) -> None:
        """Uniformly sampled per-angle tables, stacked for one gather per point and turn."""
        self._tab = np.stack([self.r_c, self.z_c, self.ar, self.az, self._ar_nocap, self._az_nocap, self.wp,
                              self.osl_tip_u, self.osl_half_thickness], axis=1).astype(np.float32)
        self._tab_scale = np.float32((self.theta.size - 1) / self.theta[-1])

    def _lookup(self, t: np.ndarray) -> np.ndarray:
        """Linear interpolation of all tables at angles ``t`` (clamped to the spiral), shape (N, 9)."""
        f = np.clip(t, 0.0, self.theta[-1]) * self._tab_scale
        i0 = np.minimum(f.astype(np.int32), self.theta.size - 2)
        w = (f - i0)[:, None]
        return self._tab[i0] * (1.0 - w) + self._tab[i0 + 1] * w

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, capsule_mm: float = 0.0) -> dict[str, np.ndarray]:
        """Classify points of the cochlear frame.

        Returns boolean arrays ``lumen``, ``st``, ``sv``, ``osl`` (bony lamina, inside the lumen),
        ``modiolus``, ``nerve`` (nerve canal inside the modiolus) and ``capsule`` (within
        ``capsule_mm`` of the duct or modiolus: dense otic-capsule bone), plus the angle ``theta``
        (rad) of the nearest duct cross-section.
        """
        n = x.shape[0]
        out = {key: np.zeros(n, dtype=bool) for key in ("lumen", "st", "sv", "osl", "modiolus", "nerve", "capsule")}
        out["theta"] = np.zeros(n, dtype=np.float32)
        d = np.float32(capsule_mm)
        rho_all = np.sqrt(x * x + y * y)
        zmax = float(self.z_c.max() + self.az.max())
        sel0 = np.flatnonzero((rho_all <= float(self.r_lw.max()) + d + 0.2) & (z >= self.z_lo - d - 0.5)
                              & (z <= zmax + d + 0.5))
        if sel0.size == 0:
            return out
        xs, ys, zs, rho = x[sel0], y[sel0], z[sel0], rho_all[sel0]
        phi = np.mod(np.arctan2(ys, xs), TWO_PI).astype(np.float32)
        m = sel0.size
        best_q = np.full(m, np.inf, dtype=np.float32)
        best_u = np.zeros(m, dtype=np.float32)
        best_w = np.zeros(m, dtype=np.float32)
        best_t = np.zeros(m, dtype=np.float32)
        best_tab = np.zeros((m, 9), dtype=np.float32)
        cap_in = np.zeros(m, dtype=bool)
        theta_end = np.float32(self.theta[-1])
        k_max = int(np.ceil(theta_end / TWO_PI)) + 1
        start_slack = np.float32(d / max(self.r_c[0], 1.0) + 0.05)
        for k in range(-1, k_max):
            t = phi + np.float32(TWO_PI * k)
            if k == -1:
                # Only the capsule closing the basal end (just "before" 0 deg) needs negative angles.
                sel = np.flatnonzero(t > -start_slack)
            else:
                sel = np.flatnonzero(t <= theta_end + (2.0 * d if d > 0 else 0.0))
            if sel.size == 0:
                continue
            ts = t[sel]
            tab = self._lookup(ts)
            rc, zc = tab[:, 0], tab[:, 1]
            u = rho[sel] - rc
            w = zs[sel] - zc
            if d > 0:
                outside = np.maximum(np.maximum(-ts, ts - theta_end), 0.0) * np.maximum(rc, 0.3)
                qi = (u / (tab[:, 4] + d)) ** 2 + (w / (tab[:, 5] + d)) ** 2 + (outside / d) ** 2
                cap_in[sel] |= qi <= 1.0
            if k == -1:
                continue
            ar = np.maximum(tab[:, 2], 1e-3)
            az = np.maximum(tab[:, 3], 1e-3)
            q = np.where((ts <= theta_end) & (tab[:, 2] > 1e-3), (u / ar) ** 2 + (w / az) ** 2, np.inf)
            better = q < best_q[sel]
            idx = sel[better]
            best_q[idx] = q[better]
            best_u[idx] = u[better]
            best_w[idx] = w[better]
            best_t[idx] = ts[better]
            best_tab[idx] = tab[better]
        lumen = best_q <= 1.0
        wp = best_tab[:, 6]
        st = lumen & (best_w < wp)
        osl = lumen & (np.abs(best_w - wp) <= best_tab[:, 8]) & (best_u <= best_tab[:, 7])
        r_mod = np.interp(zs, self.mod_z, self.mod_r).astype(np.float32)
        in_mod_z = (zs >= self.z_lo) & (zs <= self.z_hi + self.az_apex)
        modiolus = in_mod_z & (rho <= r_mod) & ~lumen
        # Cochlear nerve canal: the core of the modiolus near its base, continuous with the IAC.
        span = max(self.z_hi - self.z_lo, 1e-3)
        r_nerve = 0.55 * np.clip(1.0 - (zs - self.z_lo) / (0.55 * span), 0.0, 1.0)
        if d > 0:
            cap_in |= in_mod_z & (rho <= r_mod + d)
        for key, value in (("lumen", lumen), ("st", st), ("sv", lumen & ~st), ("osl", osl), ("modiolus", modiolus),
                           ("nerve", modiolus & (rho < r_nerve)), ("capsule", cap_in)):
            out[key][sel0] = value
        out["theta"][sel0] = best_t
        return out

    # --- clinical measures -------------------------------------------------------------------
    def landmarks(self) -> dict[str, np.ndarray]:
        """Helicotrema, Modiolus base and Round Window in the cochlear frame (mm)."""
        return {
            "Helicotrema": self.centreline(np.array([self.theta_max]))[0],
            "Modiolus base": np.zeros(3),
            "Round Window": np.array([float(self.r_c[0]), 0.0, 0.0]),
        }

    def round_window_normal(self) -> np.ndarray:
        """Outward normal of the round-window membrane (away from the scala tympani) in the cochlear frame."""
        return np.array([0.0, -1.0, 0.0])

    def _arc_length(self, radius: np.ndarray, z: np.ndarray, theta: np.ndarray) -> float:
        pts = np.stack([radius * np.cos(theta), radius * np.sin(theta), z], axis=1)
        return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())

    def measures(self) -> dict[str, float]:
        """A and B values, height, and duct lengths of this case (ground truth for case.json)."""
        keep = self.theta <= self.theta_max
        t = self.theta[keep]
        a, b = self._ab_actual()
        # Organ of Corti: the middle of the basilar membrane, between the lamina tip and the lateral wall.
        ar, az, wp = self._ar_nocap[keep], self._az_nocap[keep], self.wp[keep]
        u_lat = ar * np.sqrt(np.clip(1.0 - (wp / az) ** 2, 0.0, 1.0))
        u_oc = 0.5 * (self.osl_tip_u[keep] + u_lat)
        cdl_lw = self._arc_length(self.r_lw[keep], self.z_c[keep], t)
        cdl_oc = self._arc_length(self.r_c[keep] + u_oc, self.z_c[keep] + wp, t)
        top = float(self.z_c[keep][-1] + self.az_apex)
        bottom = float((self.z_c[keep] - self._az_nocap[keep]).min())
        return {
            "a_value_mm": a, "b_value_mm": b, "turns": self.p.turns, "theta_max_deg": self.p.theta_max_deg,
            "height_mm": top - bottom,
            "cdl_lateral_wall_mm": cdl_lw, "cdl_organ_of_corti_mm": cdl_oc,
            "cdl_escude_mm": 2.62 * a * np.log(1.0 + self.p.theta_max_deg / 235.0),
            "cdl_alexiades_oc_mm": 4.16 * a - 4.0, "cdl_koch_oc_mm": 4.16 * a - 5.05,
            "cdl_koch_lw_mm": 3.86 * a + 4.99,
            "ellipticity": float(self.e),
        }

    def _ab_actual(self) -> tuple[float, float]:
        f = lambda arr, x: float(np.interp(x, self.theta, arr))  # noqa: E731
        a = f(self.r_c, 0.0) + f(self.r_lw, np.pi)
        b = f(self.r_lw, np.pi / 2) + f(self.r_lw, 1.5 * np.pi)
        return a, b
