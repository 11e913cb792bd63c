"""Metal artefacts from physics: polychromatic projection through platinum, photon starvation, FBP.

Why not painted streaks: segmentation and contact-localisation models must learn the artefacts
they will meet, whose shape depends on the metal's position, the beam spectrum and the path
through bone. For every axial slice that contains metal this module

1. splits the clean slice into water, cortical-bone and platinum path lengths;
2. forward-projects them (parallel beam, 180 deg) and forms the detected intensity of a 120 kVp
   tungsten spectrum (8 energy bins, NIST-like attenuation of water, bone and platinum, with the
   platinum K edge at 78.4 keV), with Poisson counting noise on the rays through metal, where the
   photon starvation happens;
3. applies the scanner's water beam-hardening correction (linearisation to water), and
4. reconstructs the error ``measured - ideal`` by filtered back-projection (ramp x Hann) and adds it
   to the slice, so dark and bright streaks, blooming and noise appear where physics puts them.

The ideal image saturates metal at 3071 HU, like a clinical 12-bit CT.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .params import PhantomParams

HU_SILICONE = 400.0
HU_METAL_DISPLAY = 3071.0
#: Energy bins (keV) and relative fluence of a filtered 120 kVp tungsten spectrum.
ENERGIES = np.array([35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0, 110.0])
SPECTRUM = np.array([0.04, 0.12, 0.17, 0.18, 0.16, 0.13, 0.11, 0.09])
SPECTRUM = SPECTRUM / SPECTRUM.sum()
#: Mass attenuation (cm^2/g) at ENERGIES, rounded from NIST XCOM tables.
MU_WATER = np.array([0.307, 0.243, 0.215, 0.198, 0.187, 0.179, 0.172, 0.164])  # density 1.0
MU_BONE = np.array([0.97, 0.55, 0.37, 0.285, 0.238, 0.21, 0.193, 0.176])  # cortical bone, density 1.92
MU_PLATINUM = np.array([14.0, 7.0, 4.2, 2.8, 2.0, 6.5, 5.0, 3.6])  # density 21.45, K edge 78.4 keV
RHO_BONE, RHO_PT = 1.92, 21.45
HU_BONE_BASIS = 2200.0  # HU of pure basis bone in the material split
MU_EFF_WATER = 0.198  # 1/cm, water at the effective energy (~65 keV): maps line integrals to HU


def _water_linearisation(max_cm: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Table (measured polychromatic p -> equivalent water length) for the scanner's BH correction."""
    L = np.linspace(0.0, max_cm, 4000)
    p = -np.log((SPECTRUM[None, :] * np.exp(-MU_WATER[None, :] * L[:, None])).sum(axis=1))
    return p, L


class ParallelProjector:
    """Pixel-driven parallel-beam projector / back-projector for one slice shape (linear interpolation)."""

    def __init__(self, nj: int, ni: int, pixel_cm: tuple[float, float], n_angles: int) -> None:
        self.nj, self.ni = nj, ni
        self.dy, self.dx = pixel_cm
        self.det = min(self.dx, self.dy)
        y = (np.arange(nj) - (nj - 1) / 2.0) * self.dy
        x = (np.arange(ni) - (ni - 1) / 2.0) * self.dx
        yy, xx = np.meshgrid(y, x, indexing="ij")
        self.angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
        half = np.hypot(x.max() + self.dx, y.max() + self.dy)
        self.n_bins = int(2 * np.ceil(half / self.det) + 3)
        t = (xx.ravel()[None, :] * np.cos(self.angles)[:, None] + yy.ravel()[None, :] * np.sin(self.angles)[:, None])
        f = t / self.det + (self.n_bins - 1) / 2.0
        self.i0 = np.floor(f).astype(np.int32)
        self.w1 = (f - self.i0).astype(np.float32)
        self.offset = (np.arange(n_angles, dtype=np.int64) * self.n_bins)[:, None]
        self.flat0 = (self.offset + self.i0).ravel()
        self.area = self.dx * self.dy / self.det

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Line integrals (image units x cm), shape (angles, bins)."""
        v = image.ravel().astype(np.float32)[None, :] * np.float32(self.area)
        n = len(self.angles) * self.n_bins
        out = np.bincount(self.flat0, weights=(v * (1 - self.w1)).ravel(), minlength=n + 1)[:n]
        out += np.bincount(self.flat0 + 1, weights=(v * self.w1).ravel(), minlength=n + 1)[:n]
        return out.reshape(len(self.angles), self.n_bins)

    def fbp(self, sino: np.ndarray) -> np.ndarray:
        """Filtered back-projection (ramp x Hann) of ``sino`` back to the slice (units per cm)."""
        n_pad = int(2 ** np.ceil(np.log2(2 * self.n_bins)))
        freq = np.fft.rfftfreq(n_pad)  # cycles per sample
        filt = 2.0 * freq * 0.5 * (1.0 + np.cos(np.pi * freq / 0.5))
        q = np.fft.irfft(np.fft.rfft(sino, n_pad, axis=1) * filt[None, :], n_pad, axis=1)[:, :self.n_bins]
        q = q.astype(np.float32) / np.float32(self.det)
        qf = q.ravel()
        vals = qf[self.flat0] * (1 - self.w1.ravel()) + qf[np.minimum(self.flat0 + 1, qf.size - 1)] * self.w1.ravel()
        img = vals.reshape(len(self.angles), -1).sum(axis=0) * (np.pi / (2 * len(self.angles)))
        return img.reshape(self.nj, self.ni)


def add_metal(hu: np.ndarray, metal: np.ndarray, silicone: np.ndarray, p: PhantomParams, ijk_to_ras: np.ndarray,
              check: Callable[[], None] | None = None) -> np.ndarray:
    """Insert the electrode (silicone and platinum) into the clean HU volume and add its artefacts."""
    clean = hu * (1.0 - metal - silicone) + silicone * np.float32(HU_SILICONE) + metal * np.float32(HU_METAL_DISPLAY)
    slices = np.flatnonzero(metal.reshape(metal.shape[0], -1).max(axis=1) > 0.02)
    if slices.size == 0:
        return clean
    spacing_cm = np.linalg.norm(ijk_to_ras[:3, :3], axis=0) / 10.0
    nk, nj, ni = hu.shape
    n_angles = int(np.clip(1.2 * max(ni, nj), 90, 360))
    proj = ParallelProjector(nj, ni, (spacing_cm[1], spacing_cm[0]), n_angles)
    lin_p, lin_L = _water_linearisation()
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, 0x3E7A1]))
    out = clean.copy()
    for k in slices:
        if check is not None:
            check()
        tissue = hu[k] * (1.0 - metal[k] - silicone[k]) + silicone[k] * np.float32(HU_SILICONE)
        # Material split: water-like density from soft values, bone fraction from positive HU.
        bone = np.clip(tissue / HU_BONE_BASIS, 0.0, 1.0)
        water = np.clip(1.0 + np.minimum(tissue, 0.0) / 1000.0, 0.0, None) * (1.0 - bone)
        a_w, a_b, a_m = proj.forward(water), proj.forward(bone), proj.forward(metal[k])
        rays = a_m > 1e-5
        if not rays.any():
            continue
        mu = (MU_WATER[None, :] * a_w[rays][:, None] + MU_BONE[None, :] * RHO_BONE * a_b[rays][:, None]
              + MU_PLATINUM[None, :] * RHO_PT * a_m[rays][:, None])
        transmitted = (SPECTRUM[None, :] * np.exp(-mu)).sum(axis=1)
        counts = np.maximum(rng.poisson(p.photons * transmitted), 1.0)  # photon starvation floor
        measured = -np.log(counts / p.photons)
        water_len = np.interp(measured, lin_p, lin_L)  # scanner's water beam-hardening correction
        p_meas = MU_EFF_WATER * water_len
        # What an ideal (monoenergetic, noise-free, 3071-HU metal) scanner would have measured.
        ideal_mu = MU_EFF_WATER * (1.0 + clean[k] / 1000.0)
        p_ideal = proj.forward(ideal_mu)[rays]
        delta = np.zeros_like(a_m)
        delta[rays] = p_meas - p_ideal
        out[k] += proj.fbp(delta) * np.float32(1000.0 / MU_EFF_WATER)
    return out
