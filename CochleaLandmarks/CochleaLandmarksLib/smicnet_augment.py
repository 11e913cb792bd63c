"""Batched SMICNet training patches in torch (CPU or CUDA): where to sample, how to sample, how to augment.

Why on the device and batched: the authors' generator (seed-methods.md 1.6) cuts one patch at a time
with scipy and albumentations; for tens of cases and millions of patches the sampling, not the tiny
network, would be the bottleneck. Here a whole batch of oblique 81x81 planes is read at exact
(sub-voxel) positions with one ``grid_sample`` call per case.

Geometry (the volume is a :class:`TrainingVolume`: KJI array on LPS axes at 0.3 mm):

* A **sagittal** patch of centre ``c`` has rows along +j and columns along +k; a **coronal** patch has rows
  along +i and columns along +k, as the authors' crops (``vol[i, j-40:j+41, k-40:k+41]`` and
  ``vol[i-40:i+41, j, k-40:k+41]``). Pixel ``(r, q)`` lies at ``c + s * R @ ((r-40) u + (q-40) v)``
  (u = row axis, v = column axis, s = scale, R = rotation).
* **Landmark convention of our own models**: the landmark (plus a small jitter) is at the centre
  pixel ``(40, 40)`` exactly (the authors' unrotated crops put it at 41, their rotated ones at 40.5).
  :data:`LANDMARK_PIXEL` is recorded in every weight file and registry entry we train, so inference
  can centre its windows accordingly (``centre_offset_vox=(0, 0, 0)`` in ``smicnet_sweep``).
* Rotation ``R = R_u(alpha) R_v(beta) R_n(gamma)``: an in-plane spin gamma ~ U(0, 330 deg) about the
  plane normal n, then out-of-plane tilts alpha, beta ~ U(-10, 10 deg) (8 deg for the round window)
  about the row and column axes. The rotation is about the exact (jittered) centre, so the centre
  pixel always samples the centre point. The authors draw the tilts in [0, 10] only; with the spin
  the sign hardly matters, and a symmetric range has no preferred direction.
* Interpolation: trilinear (``grid_sample``, ``align_corners=True``, so index 0 is the first voxel
  centre). The authors use cubic splines (``ndimage.affine_transform``, order 3) for rotated patches;
  trilinear is slightly smoother, which the blur augmentation covers, and is exact at voxel centres
  (an unrotated, unjittered patch equals the voxels). Outside the volume it reads 0 (the volume's
  global minimum after normalisation), like the sweep that pads with the ROI minimum.

Class balance and where background patches come from: a batch has ``background_fraction`` background
patches (default half) and equal shares of the three landmarks. Of the background centres, 40 % are
"hard": drawn on a shell 3..12 voxels (0.9-3.6 mm) around a landmark; 30 % are "structure": on voxels
with strong edges in the background region (``TrainingVolume.structure_ijk``; this is where a sweep's
false landmarks appear, e.g. on the semicircular canals); 30 % are uniform over the box of
+-``background_extent_mm`` (default 16 mm, the reach of the fast sweep) around the landmark centroid.
All are inside the volume. Every background centre is more than 3 voxels
from every landmark; the band between the positive jitter (0.5 voxel) and 3 voxels is never labelled,
so the probability map falls off smoothly around each landmark, which the centre-of-mass step needs.

Augmentation (the same distribution for every class, so no augmentation is a cue for a class; the
authors rotated only landmark patches): rotation (``rotate_prob``) and scale jitter; intensity
changes for CT/CBCT robustness (random gamma, contrast windowing that clips the darkest/brightest
grey values, a linear shading ramp like CBCT cupping), each with ``intensity_prob``; one of the
authors' Gaussian noise (var U(0, 6e-4), mean 2e-4), 3x3 Gaussian blur (sigma 0.8) or sharpen
(alpha 0.002-0.007, lightness 0.1-0.4) with ``filter_prob``; "gradual padding" (a zero frame 1-5 px
wide, the authors' central 71..79 square) with ``pad_prob``. Then the exact Keras quantisation
(:func:`quantize_patches_torch`), as at inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from CochleaCommonLib.devices import require_torch
from CochleaCommonLib.errors import InvalidInputError

from .smicnet_model import BACKGROUND_CLASS, PATCH_SIZE
from .smicnet_preprocess import quantize_patches_torch
from .smicnet_training_data import TrainingVolume

HALF = PATCH_SIZE // 2
#: Row and column of the landmark in the patches of the models we train (see the module docstring).
LANDMARK_PIXEL = (HALF, HALF)
ROUND_WINDOW_CLASS = 2
_MAX_REDRAWS = 200


@dataclass
class AugmentConfig:
    """Knobs of the patch sampler; defaults follow the authors (seed-methods.md 1.6) where they exist."""

    background_fraction: float = 0.5
    hard_negative_fraction: float = 0.4
    structure_fraction: float = 0.3
    mined_fraction: float = 0.0
    jitter_vox: float = 0.5
    min_background_distance_vox: float = 3.0
    hard_shell_max_vox: float = 12.0
    coronal_prob: float = 0.5
    rotate_prob: float = 0.9
    spin_max_deg: float = 330.0
    tilt_max_deg: float = 10.0
    tilt_max_deg_round_window: float = 8.0
    scale_jitter: float = 0.05
    intensity_prob: float = 0.3
    intensity_gamma: tuple[float, float] = (0.67, 1.5)
    window_clip_max: float = 0.25
    shading_max: float = 0.15
    filter_prob: float = 0.2
    noise_var_max: float = 6e-4
    noise_mean: float = 2e-4
    blur_sigma: float = 0.8
    sharpen_alpha: tuple[float, float] = (0.002, 0.007)
    sharpen_lightness: tuple[float, float] = (0.1, 0.4)
    pad_prob: float = 0.25
    pad_width: tuple[int, int] = (1, 5)

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` for values that cannot work."""
        for name in ("background_fraction", "hard_negative_fraction", "structure_fraction", "mined_fraction",
                     "coronal_prob",
                     "rotate_prob", "intensity_prob", "filter_prob", "pad_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"{name} must be between 0 and 1, got {value}.")
        if self.hard_negative_fraction + self.structure_fraction + self.mined_fraction > 1.0 + 1e-9:
            raise InvalidInputError("hard_negative_fraction + structure_fraction + mined_fraction must not exceed 1.")
        if self.background_fraction >= 1.0:
            raise InvalidInputError("background_fraction must be below 1 (some landmark patches are needed).")
        if self.jitter_vox < 0 or self.jitter_vox >= self.min_background_distance_vox:
            raise InvalidInputError(f"jitter_vox ({self.jitter_vox}) must be >= 0 and below the background "
                                    f"distance ({self.min_background_distance_vox} voxels).")
        if self.hard_shell_max_vox <= self.min_background_distance_vox:
            raise InvalidInputError("hard_shell_max_vox must exceed min_background_distance_vox.")
        if not 0.0 <= self.scale_jitter <= 0.1:
            raise InvalidInputError(f"scale_jitter must be between 0 and 0.1, got {self.scale_jitter}.")
        lo, hi = self.pad_width
        if not 0 <= lo <= hi <= HALF:
            raise InvalidInputError(f"pad_width must satisfy 0 <= low <= high <= {HALF}, got {self.pad_width}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class PatchBatch:
    """A sampled batch: network input, labels, and where each patch came from (for tests and reports)."""

    patches: Any  # (N, 1, 81, 81) float32, quantised
    labels: Any  # (N,) int64, CLASS_NAMES order
    case_index: Any  # (N,) int64
    centres: Any  # (N, 3) float32 continuous (i, j, k) in the case's crop
    coronal: Any  # (N,) bool


# --- geometry ---------------------------------------------------------------------------------------
def _rodrigues(axis: Any, angle: Any) -> Any:
    """Rotation matrices (N, 3, 3) about unit ``axis`` (N, 3) by ``angle`` (N,) radians."""
    torch = require_torch()
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                     torch.stack([-y, x, zero], -1)], -2)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * k + (1.0 - c) * (k @ k)


def plane_axes(coronal: Any) -> tuple[Any, Any, Any]:
    """Per patch (row axis u, column axis v, normal n) as (N, 3) ijk unit vectors.

    Sagittal: u = +j, v = +k, n = +i. Coronal: u = +i, v = +k, n = +j.
    """
    torch = require_torch()
    n = coronal.shape[0]
    dev = coronal.device
    e = torch.eye(3, device=dev)
    c = coronal[:, None]
    u = torch.where(c, e[0].expand(n, 3), e[1].expand(n, 3))
    v = e[2].expand(n, 3).clone()
    normal = torch.where(c, e[1].expand(n, 3), e[0].expand(n, 3))
    return u, v, normal


def rotation_matrices(coronal: Any, spin_rad: Any, tilt_row_rad: Any, tilt_col_rad: Any) -> Any:
    """``R = R_u(tilt_row) R_v(tilt_col) R_n(spin)`` per patch (see the module docstring), (N, 3, 3)."""
    u, v, normal = plane_axes(coronal)
    return _rodrigues(u, tilt_row_rad) @ _rodrigues(v, tilt_col_rad) @ _rodrigues(normal, spin_rad)


def patch_positions(centres: Any, coronal: Any, rotation: Any | None = None, scale: Any | None = None, *,
                    landmark_pixel: int = HALF) -> Any:
    """Continuous (i, j, k) sample position of every pixel, (N, 81, 81, 3).

    Pixel ``(landmark_pixel, landmark_pixel)`` samples the centre (40 for our models; 41 reproduces the
    authors' unrotated crops, so their weights can be fine-tuned without moving what they learned).
    """
    torch = require_torch()
    u, v, _ = plane_axes(coronal)
    if rotation is not None:
        u = (rotation @ u[..., None])[..., 0]
        v = (rotation @ v[..., None])[..., 0]
    if scale is not None:
        u, v = u * scale[:, None], v * scale[:, None]
    d = torch.arange(PATCH_SIZE, device=centres.device, dtype=centres.dtype) - float(landmark_pixel)
    rows = d[None, :, None, None] * u[:, None, None, :]
    cols = d[None, None, :, None] * v[:, None, None, :]
    return centres[:, None, None, :] + rows + cols


def sample_plane(volume: Any, positions: Any) -> Any:
    """Trilinear values of ``volume`` (a (1, 1, K, J, I) tensor) at ``positions`` (N, H, W, 3) ijk; (N, H, W).

    Positions outside the volume read 0.
    """
    torch = require_torch()
    size = torch.tensor(volume.shape[-1:-4:-1], dtype=positions.dtype, device=positions.device)  # (I, J, K)
    grid = 2.0 * positions / torch.clamp(size - 1.0, min=1.0) - 1.0  # x = i (W), y = j (H), z = k (D)
    out = torch.nn.functional.grid_sample(volume, grid[None], mode="bilinear", padding_mode="zeros",
                                          align_corners=True)
    return out[0, 0]


# --- the sampler --------------------------------------------------------------------------------------
class PatchSampler:
    """Draws balanced, augmented, quantised training batches from prepared volumes on one device."""

    def __init__(self, volumes: list[TrainingVolume], config: AugmentConfig | None = None, device: Any = "cpu", *,
                 landmark_pixel: int = HALF):
        torch = require_torch()
        if not volumes:
            raise InvalidInputError("The patch sampler needs at least one volume.")
        if landmark_pixel not in (HALF, HALF + 1):
            raise InvalidInputError(f"The landmark must sit at patch pixel {HALF} (our models) or {HALF + 1} (the "
                                    f"authors' weights), not {landmark_pixel}.")
        self.landmark_pixel = int(landmark_pixel)
        self.config = config if config is not None else AugmentConfig()
        self.config.validate()
        self.device = torch.device(device)
        self.volumes = [torch.from_numpy(v.array).to(self.device, torch.float32)[None, None] for v in volumes]
        f32 = dict(dtype=torch.float32, device=self.device)
        self.landmarks = torch.tensor(np.array([v.landmarks_ijk for v in volumes]), **f32)  # (C, 3, 3)
        self.bg_lo = torch.tensor(np.array([v.background_lo for v in volumes]), **f32)
        self.bg_hi = torch.tensor(np.array([v.background_hi for v in volumes]), **f32)
        self.limits = torch.tensor(np.array([[n - 1 for n in v.array.shape[::-1]] for v in volumes]), **f32)
        self.case_ids = [v.case_id for v in volumes]
        self.structure = [torch.from_numpy(np.asarray(v.structure_ijk, dtype=np.float32)).to(self.device)
                          for v in volumes]
        self.mined = [torch.from_numpy(np.asarray(v.mined_ijk, dtype=np.float32).reshape(-1, 3)).to(self.device)
                      for v in volumes]

    # random helpers (all on the device, all from the given generator)
    def _rand(self, g: Any, *shape: int) -> Any:
        return require_torch().rand(*shape, generator=g, device=self.device)

    def _uniform(self, g: Any, n: int, lo: float, hi: float) -> Any:
        return lo + (hi - lo) * self._rand(g, n)

    def _unit_vectors(self, g: Any, n: int) -> Any:
        torch = require_torch()
        x = torch.randn(n, 3, generator=g, device=self.device)
        return x / torch.clamp(x.norm(dim=1, keepdim=True), min=1e-6)

    def plan_labels(self, n: int, g: Any) -> Any:
        """``n`` class labels: round(n * background_fraction) background, the rest shared equally, shuffled."""
        torch = require_torch()
        n_bg = int(round(n * self.config.background_fraction))
        n_lm = n - n_bg
        counts = [n_lm // 3] * 3
        extra = torch.randperm(3, generator=g, device=self.device)[: n_lm % 3].tolist()
        for c in extra:
            counts[c] += 1
        labels = torch.cat([torch.full((counts[c],), c, dtype=torch.int64, device=self.device) for c in range(3)]
                           + [torch.full((n_bg,), BACKGROUND_CLASS, dtype=torch.int64, device=self.device)])
        return labels[torch.randperm(n, generator=g, device=self.device)]

    def _far_from_landmarks(self, case: Any, points: Any) -> Any:
        d = (points[:, None, :] - self.landmarks[case]).norm(dim=-1)  # (n, 3)
        inside = ((points >= 0) & (points <= self.limits[case])).all(dim=1)
        return (d > self.config.min_background_distance_vox).all(dim=1) & inside

    def _pool_draw(self, case: Any, fallback: Any, g: Any, pools: list) -> Any:
        """A point (+- 0.5 voxel) of each case's pool (strong-edge voxels, or mined mistakes); ``fallback``
        where a case's pool is empty."""
        torch = require_torch()
        out = fallback.clone()
        for c in torch.unique(case).tolist():
            points = pools[c]
            if points.shape[0] == 0:
                continue
            idx = (case == c).nonzero()[:, 0]
            pick = torch.randint(0, points.shape[0], (idx.numel(),), generator=g, device=self.device)
            out[idx] = points[pick] + self._rand(g, idx.numel(), 3) - 0.5
        return out

    def background_centres(self, case: Any, g: Any) -> Any:
        """Background centres for the cases ``case`` (n,): hard (shell) first, then structure, then mined (the
        model's own false positives, see :mod:`smicnet_mining`; a case without any gets a shell point), then
        uniform."""
        torch = require_torch()
        cfg = self.config
        n = case.shape[0]
        position = torch.arange(n, device=self.device)
        n_hard = int(round(n * cfg.hard_negative_fraction))
        n_structure = int(round(n * cfg.structure_fraction))
        hard = position < n_hard
        structure = (position >= n_hard) & (position < n_hard + n_structure)
        n_mined = int(round(n * cfg.mined_fraction))
        mined = (position >= n_hard + n_structure) & (position < n_hard + n_structure + n_mined)
        out = torch.zeros(n, 3, device=self.device)
        todo = torch.ones(n, dtype=torch.bool, device=self.device)
        for _ in range(_MAX_REDRAWS):
            idx = todo.nonzero()[:, 0]
            if idx.numel() == 0:
                return out
            m, c = idx.numel(), case[idx]
            which = torch.randint(0, 3, (m,), generator=g, device=self.device)
            radius = self._uniform(g, m, cfg.min_background_distance_vox, cfg.hard_shell_max_vox)
            shell = self.landmarks[c, which] + radius[:, None] * self._unit_vectors(g, m)
            box = self.bg_lo[c] + (self.bg_hi[c] - self.bg_lo[c]) * self._rand(g, m, 3)
            cand = torch.where(hard[idx, None], shell, box)
            if bool(structure[idx].any()):
                s_idx = structure[idx].nonzero()[:, 0]
                cand[s_idx] = self._pool_draw(c[s_idx], box[s_idx], g, self.structure)
            if bool(mined[idx].any()):
                m_idx = mined[idx].nonzero()[:, 0]
                cand[m_idx] = self._pool_draw(c[m_idx], shell[m_idx], g, self.mined)
            ok = self._far_from_landmarks(c, cand)
            out[idx[ok]] = cand[ok]
            todo[idx[ok]] = False
        bad = sorted({self.case_ids[int(i)] for i in case[todo].tolist()})
        raise InvalidInputError(f"No background patch position more than {cfg.min_background_distance_vox} voxels "
                                f"from every landmark was found in case(s) {', '.join(bad)}; the volume is too small.")

    def centres(self, labels: Any, case: Any, g: Any) -> Any:
        """Patch centres (n, 3): landmark + jitter in a ball of ``jitter_vox``, or background positions."""
        torch = require_torch()
        n = labels.shape[0]
        out = torch.zeros(n, 3, device=self.device)
        pos = labels != BACKGROUND_CLASS
        if pos.any():
            idx = pos.nonzero()[:, 0]
            m = idx.numel()
            r = self.config.jitter_vox * self._rand(g, m) ** (1.0 / 3.0)
            out[idx] = self.landmarks[case[idx], labels[idx]] + r[:, None] * self._unit_vectors(g, m)
        if (~pos).any():
            idx = (~pos).nonzero()[:, 0]
            out[idx] = self.background_centres(case[idx], g)
        return out

    def extract(self, case: Any, centres: Any, coronal: Any, rotation: Any | None = None,
                scale: Any | None = None) -> Any:
        """Raw (normalised, unquantised) patches (n, 81, 81) at the given geometry, one grid_sample per case."""
        torch = require_torch()
        positions = patch_positions(centres, coronal, rotation, scale, landmark_pixel=self.landmark_pixel)
        out = torch.empty(centres.shape[0], PATCH_SIZE, PATCH_SIZE, device=self.device)
        for c in torch.unique(case).tolist():
            idx = (case == c).nonzero()[:, 0]
            out[idx] = sample_plane(self.volumes[c], positions[idx])
        return out

    def sample(self, n: int, generator: Any, *, augment: bool = True, labels: Any | None = None) -> PatchBatch:
        """A batch of ``n`` quantised patches with balanced labels (or the given ``labels``)."""
        torch = require_torch()
        cfg, g = self.config, generator
        if labels is None:
            labels = self.plan_labels(n, g)
        case = torch.randint(0, len(self.volumes), (n,), generator=g, device=self.device)
        centres = self.centres(labels, case, g)
        coronal = self._rand(g, n) < cfg.coronal_prob
        rotation = scale = None
        if augment:
            rotate = (self._rand(g, n) < cfg.rotate_prob).float()
            tilt = torch.full((n,), cfg.tilt_max_deg, device=self.device)
            tilt[labels == ROUND_WINDOW_CLASS] = cfg.tilt_max_deg_round_window
            rad = math.pi / 180.0
            spin = self._rand(g, n) * cfg.spin_max_deg * rad * rotate
            tilt_r = (2.0 * self._rand(g, n) - 1.0) * tilt * rad * rotate
            tilt_c = (2.0 * self._rand(g, n) - 1.0) * tilt * rad * rotate
            rotation = rotation_matrices(coronal, spin, tilt_r, tilt_c)
            scale = 1.0 + cfg.scale_jitter * (2.0 * self._rand(g, n) - 1.0)
        patches = self.extract(case, centres, coronal, rotation, scale)
        if augment:
            patches = self.augment_intensity(patches, g)
            patches = self.augment_filters(patches, g)
            patches = self.pad_frame(patches, g)
        x = quantize_patches_torch(patches)[:, None]
        return PatchBatch(x, labels, case, centres, coronal)

    # --- image augmentations (all per patch, vectorised) -------------------------------------------------
    def augment_intensity(self, x: Any, g: Any) -> Any:
        """Random gamma, contrast windowing with clipping, and a linear shading ramp (each with intensity_prob)."""
        torch = require_torch()
        cfg = self.config
        n = x.shape[0]
        lo = x.amin(dim=(1, 2), keepdim=True)
        hi = x.amax(dim=(1, 2), keepdim=True)
        span = torch.clamp(hi - lo, min=1e-6)
        # gamma on the patch's own range (min-max is applied later anyway)
        pick = (self._rand(g, n) < cfg.intensity_prob)[:, None, None]
        glo, ghi = (math.log(v) for v in cfg.intensity_gamma)
        gamma = torch.exp(self._uniform(g, n, glo, ghi))[:, None, None]
        t = torch.clamp((x - lo) / span, 0.0, 1.0)
        x = torch.where(pick, lo + span * t ** gamma, x)
        # window: clip a random part of the darkest and brightest grey values
        pick = (self._rand(g, n) < cfg.intensity_prob)[:, None, None]
        a = lo + span * cfg.window_clip_max * self._rand(g, n)[:, None, None] * 0.5
        b = hi - span * cfg.window_clip_max * self._rand(g, n)[:, None, None]
        x = torch.where(pick, torch.minimum(torch.maximum(x, a), b), x)
        # shading ramp across the patch (cone-beam CT cupping / scatter gradients)
        pick = (self._rand(g, n) < cfg.intensity_prob)[:, None, None]
        phi = 2.0 * math.pi * self._rand(g, n)
        amp = cfg.shading_max * self._rand(g, n)
        d = torch.arange(PATCH_SIZE, device=self.device, dtype=x.dtype) / HALF - 1.0
        ramp = torch.cos(phi)[:, None, None] * d[None, :, None] + torch.sin(phi)[:, None, None] * d[None, None, :]
        return torch.where(pick, x + (amp[:, None, None] * span) * ramp, x)

    def augment_filters(self, x: Any, g: Any) -> Any:
        """One of: Gaussian noise, 3x3 Gaussian blur, sharpen (the authors' OneOf), with filter_prob."""
        torch = require_torch()
        F = torch.nn.functional
        cfg = self.config
        n = x.shape[0]
        pick = self._rand(g, n) < cfg.filter_prob
        kind = torch.randint(0, 3, (n,), generator=g, device=self.device)
        noise_std = torch.sqrt(cfg.noise_var_max * self._rand(g, n))[:, None, None]
        noisy = x + cfg.noise_mean + noise_std * torch.randn(x.shape, generator=g, device=self.device)
        ax = torch.arange(3, device=self.device, dtype=x.dtype) - 1.0
        g1 = torch.exp(-ax ** 2 / (2.0 * cfg.blur_sigma ** 2))
        g1 = g1 / g1.sum()
        blur_k = (g1[:, None] * g1[None, :]).expand(n, 3, 3)
        alpha = self._uniform(g, n, *cfg.sharpen_alpha)[:, None, None]
        light = self._uniform(g, n, *cfg.sharpen_lightness)[:, None, None]
        effect = -torch.ones(n, 3, 3, device=self.device)
        effect[:, 1, 1] = 8.0 + light[:, 0, 0]
        identity = torch.zeros(3, 3, device=self.device)
        identity[1, 1] = 1.0
        sharp_k = (1.0 - alpha) * identity + alpha * effect
        kernels = torch.where((kind == 1)[:, None, None], blur_k, sharp_k)
        padded = F.pad(x[None], (1, 1, 1, 1), mode="reflect")
        filtered = F.conv2d(padded, kernels[:, None], groups=n)[0]
        out = torch.where((kind == 0)[:, None, None], noisy, filtered)
        return torch.where(pick[:, None, None], out, x)

    def pad_frame(self, x: Any, g: Any) -> Any:
        """The authors' "gradual padding": a frame of 0 (the global minimum) 1-5 px wide, with pad_prob."""
        torch = require_torch()
        cfg = self.config
        n = x.shape[0]
        pick = self._rand(g, n) < cfg.pad_prob
        lo, hi = cfg.pad_width
        width = torch.randint(lo, hi + 1, (n,), generator=g, device=self.device) * pick
        d = torch.arange(PATCH_SIZE, device=self.device)
        edge = torch.minimum(d, PATCH_SIZE - 1 - d)  # distance to the nearest border, per row/column
        frame = torch.minimum(edge[None, :, None], edge[None, None, :]) < width[:, None, None]
        return torch.where(frame, torch.zeros((), device=self.device, dtype=x.dtype), x)
