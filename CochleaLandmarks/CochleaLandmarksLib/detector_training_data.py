"""Training cubes for the 3D detector: annotated volumes in memory, augmented cubes and their targets.

Why augmentation lives in the cube's axes: a rotated, scaled or mirrored cube is just another
IJK-to-RAS matrix for :func:`detector_geometry.sample_cubes`, so pose, side (a mirrored right ear is a
left ear) and spacing are varied with exactly the resampling code that runs at inference, and the
targets follow by mapping the true RAS landmarks into the same cube. Intensity augmentations (gamma,
contrast, offset, noise, blur) cover CT versus cone-beam grey values on top of the per-cube window.

Targets per output cell c (centred on cube voxel ``OUTPUT_STRIDE * c``) and channel:
a Gaussian heat ``exp(-d^2 / 2 sigma^2)`` (d in cells) and the displacement to the landmark in cube
voxels / ``DISPLACEMENT_SCALE``, supervised within ``DISPLACEMENT_RADIUS_CELLS`` of the landmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from CochleaCommonLib.devices import require_torch
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.progress import Progress

from .detector_geometry import (
    CANONICAL_AXES,
    cube_ijk_to_ras,
    intensity_window,
    pooled_for_spacing,
    ras_to_cube_points,
    sample_cubes,
    whole_volume_window,
)
from .detector_model import DISPLACEMENT_SCALE, OUTPUT_STRIDE
from .detector_stages import StageGeometry
from .landmark_dataset import find_head_cases, find_landmark_cases, read_ground_truth
from .landmark_result import LANDMARK_NAMES

#: Displacements are trained within this many cells of the landmark (the cells that vote at inference).
DISPLACEMENT_RADIUS_CELLS = 3.0


@dataclass
class DetectorVolume:
    """One annotated volume in memory: array (KJI, as stored), IJK-to-RAS, landmarks (RAS) per channel."""

    case_id: str
    array: np.ndarray
    ijk_to_ras: np.ndarray
    points: dict[str, np.ndarray]  # channel -> (M, 3) RAS; M = number of ears carrying it
    window: tuple[float, float] | None = None  # whole-volume window (global pass)

    @property
    def centroid(self) -> np.ndarray:
        return np.mean(np.concatenate(list(self.points.values())), axis=0)


def load_landmark_volumes(data_dir: Any, progress: Progress | None = None) -> list[DetectorVolume]:
    """Every annotated volume of a folder (see :func:`find_landmark_cases`), one ear each."""
    prog = Progress.ensure(progress)
    cases = find_landmark_cases(data_dir)
    volumes = []
    for n, case in enumerate(cases):
        prog.update(n / len(cases), f"Reading {case.case_id}")
        image = read_image(case.volume_path)
        truth = read_ground_truth(case.landmarks_path)
        volumes.append(DetectorVolume(case.case_id, image.array, image.ijk_to_ras,
                                      {name: truth[name][None] for name in LANDMARK_NAMES}))
    return volumes


def load_head_volumes(data_dir: Any, spacing_mm: float, progress: Progress | None = None) -> list[DetectorVolume]:
    """Head volumes with every cochlea annotated (see :func:`find_head_cases`), pooled towards ``spacing_mm``."""
    from .detector_stages import COCHLEA_CHANNEL

    prog = Progress.ensure(progress)
    cases = find_head_cases(data_dir)
    volumes = []
    for n, case in enumerate(cases):
        prog.update(n / len(cases), f"Reading {case.case_id}")
        image = read_image(case.volume_path)
        bases = [read_ground_truth(p)["Modiolus base"] for p in case.landmark_paths]
        pooled, matrix = pooled_for_spacing(image.array, image.ijk_to_ras, spacing_mm)
        points = {COCHLEA_CHANNEL: np.array(bases).reshape(-1, 3)}
        volumes.append(DetectorVolume(case.case_id, pooled, matrix, points, whole_volume_window(pooled)))
    return volumes


def random_axes(rng: np.random.Generator, max_rotation_deg: float, scale_range: tuple[float, float],
                mirror_probability: float) -> np.ndarray:
    """Canonical axes turned by up to ``max_rotation_deg`` about a random axis, scaled, and mirrored (L-R) at random."""
    axis = rng.normal(size=3)
    turn = rotation_matrix(axis / np.linalg.norm(axis), float(rng.uniform(0.0, max_rotation_deg)))
    mirror = np.diag([-1.0, 1.0, 1.0]) if rng.uniform() < mirror_probability else np.eye(3)
    scale = float(rng.uniform(*scale_range))
    return turn @ mirror @ CANONICAL_AXES * scale


def random_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A uniform random point in a ball of ``radius`` (mm)."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * float(rng.uniform()) ** (1.0 / 3.0)


def cell_targets(stage: StageGeometry, cube: np.ndarray, points: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Heat ``(L, n, n, n)``, displacement ``(L, 3, n, n, n)`` and its mask ``(L, n, n, n)``, cells in KJI order."""
    n = stage.size // OUTPUT_STRIDE
    c = np.arange(n, dtype=np.float64) * OUTPUT_STRIDE
    kk, jj, ii = np.meshgrid(c, c, c, indexing="ij")
    centres = np.stack([ii, jj, kk])  # (3, n, n, n) cube voxel (i, j, k) of each cell
    heat = np.zeros((len(stage.channels), n, n, n), dtype=np.float32)
    disp = np.zeros((len(stage.channels), 3, n, n, n), dtype=np.float32)
    mask = np.zeros((len(stage.channels), n, n, n), dtype=np.float32)
    sigma = stage.heat_sigma_cells * OUTPUT_STRIDE
    for ch, name in enumerate(stage.channels):
        best = None
        for p in ras_to_cube_points(cube, points[name]):
            delta = p[:, None, None, None] - centres
            d2 = np.sum(delta * delta, axis=0)
            h = np.exp(-d2 / (2.0 * sigma * sigma)).astype(np.float32)
            heat[ch] = np.maximum(heat[ch], h)
            near = d2 <= (DISPLACEMENT_RADIUS_CELLS * OUTPUT_STRIDE) ** 2
            closer = near if best is None else near & (d2 < best)
            disp[ch][:, closer] = (delta[:, closer] / DISPLACEMENT_SCALE).astype(np.float32)
            mask[ch][closer] = 1.0
            best = d2 if best is None else np.minimum(best, d2)
    return heat, disp, mask


def augment_intensities(x: Any, rng: np.random.Generator) -> Any:
    """Gamma, contrast, offset, blur and noise on a batch of windowed cubes (in place where possible)."""
    torch = require_torch()
    F = torch.nn.functional

    for b in range(x.shape[0]):
        v = x[b]
        if rng.uniform() < 0.5:
            gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            v = v.clamp(0.0, 1.5).pow(gamma)
        v = v * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-0.12, 0.12))
        if rng.uniform() < 0.25:
            v = F.avg_pool3d(v[None], 3, stride=1, padding=1, count_include_pad=False)[0]
        if rng.uniform() < 0.7:
            v = v + torch.randn_like(v) * float(rng.uniform(0.0, 0.08))
        x[b] = v
    return x


def sample_cube(vol: DetectorVolume, stage: StageGeometry, centre: np.ndarray, axes: np.ndarray,
                window_centre: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cube of ``vol`` (tensor ``(1, n, n, n)``), its heat, displacement and mask targets, and its IJK-to-RAS."""
    cube = cube_ijk_to_ras(centre, stage.size, stage.spacing_mm, axes)
    if vol.window is not None:
        window = vol.window
    else:
        window = intensity_window(vol.array, vol.ijk_to_ras, window_centre, stage.window_radius_mm)
    x = sample_cubes(vol.array, vol.ijk_to_ras, [cube], stage.size, window)[0]
    heat, disp, mask = cell_targets(stage, cube, vol.points)
    return x, heat, disp, mask, cube


def random_centre(vol: DetectorVolume, stage: StageGeometry, rng: np.random.Generator) -> np.ndarray:
    """Where a training cube of ``stage`` is centred (see :func:`sample_batch`)."""
    if stage.name == "fine":
        name = stage.channels[int(rng.integers(len(stage.channels)))]
        return vol.points[name][0] + random_ball(rng, stage.jitter_mm)
    if stage.name == "global":
        if rng.uniform() < 0.6:
            pts = np.concatenate(list(vol.points.values()))
            return pts[int(rng.integers(len(pts)))] + random_ball(rng, stage.jitter_mm)
        shape = np.array(vol.array.shape[::-1])
        return vol.ijk_to_ras[:3, :3] @ (rng.uniform(0, 1, 3) * (shape - 1)) + vol.ijk_to_ras[:3, 3]
    return vol.centroid + random_ball(rng, stage.jitter_mm)


def sample_batch(volumes: list[DetectorVolume], stage: StageGeometry, rng: np.random.Generator, batch: int, *,
                 augment: bool = True, device: Any = "cpu") -> tuple[Any, Any, Any, Any]:
    """A batch of (cubes, heat, displacement, mask) tensors for ``stage``.

    Coarse cubes are centred within ``jitter_mm`` of the landmarks' centroid (a rough click), global
    cubes around a random ear or anywhere in the volume, fine cubes within ``jitter_mm`` of one landmark
    (a coarse estimate). Fine cubes take their window from the coarse region, as at inference.
    """
    torch = require_torch()
    xs, heats, disps, masks = [], [], [], []
    for _ in range(batch):
        vol = volumes[int(rng.integers(len(volumes)))]
        centre = random_centre(vol, stage, rng)
        axes = random_axes(rng, 25.0 if stage.name == "global" else 20.0, (0.9, 1.1), 0.5) if augment \
            else CANONICAL_AXES
        context = vol.centroid + (random_ball(rng, 8.0) if augment else 0.0)
        x, heat, disp, mask, _ = sample_cube(vol, stage, centre, axes, context)
        xs.append(x)
        heats.append(heat)
        disps.append(disp)
        masks.append(mask)
    x = torch.stack(xs)
    if augment:
        x = augment_intensities(x, rng)
    return (x.to(device), torch.from_numpy(np.stack(heats)).to(device), torch.from_numpy(np.stack(disps)).to(device),
            torch.from_numpy(np.stack(masks)).to(device))
