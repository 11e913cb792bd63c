"""Seed-free mode: find where the cochleae are in a whole volume, then name each ear's side.

Why two ways to find them:

* A head CT (any edge longer than ``SMALL_VOLUME_MM``) gets the detector's **global pass**: the whole
  volume, block-averaged and sampled at 2 mm, in one forward pass; each peak of its "cochlea" heatmap
  (non-maximum suppression over 20 mm) becomes a seed. On a 512 x 512 x 300 head this is ~1 M cells.
* A temporal-bone CT (every edge at most ``SMALL_VOLUME_MM``) is too small for a 2 mm view to show
  anything; there the **coarse pass is tiled** over the volume (cube centres 14 mm apart, so every point
  is within 12 mm of one centre, inside the 9 mm the coarse pass was trained to reach from plus its
  cube's margin) and the Modiolus-base peaks are the seeds.

Each seed then runs the ordinary seeded detection; what it confirms (a Modiolus base) is an ear.
Side: with two ears, the one further to the patient's right (larger RAS x) is the right ear. With one,
the landmark triangle's handedness decides: the normal (apex - base) x (round window - base) points
superior in a left ear and inferior in a right one (a mirror image flips it; it holds for every phantom
pose up to 30 deg, though its S component can drop to about 0.16 at the worst pose), so the side needs no
head outline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from CochleaCommonLib.image import Image
from CochleaCommonLib.progress import Progress

from .detector_geometry import (
    cube_ijk_to_ras,
    cube_points_to_ras,
    intensity_window,
    pooled_for_spacing,
    sample_cubes,
    volume_cube,
    whole_volume_window,
)
from .detector_inference import Detector3D, heat_image, run_pass
from .detector_model import OUTPUT_STRIDE
from .detector_readout import heat_peaks, readout_cells

#: Volumes whose every edge is at most this long (mm) are searched by tiling the coarse pass.
SMALL_VOLUME_MM = 64.0
#: Tile centres of the coarse pass are this far apart (mm).
TILE_STEP_MM = 14.0
#: A peak of the global heatmap (or a tile's Modiolus base) above this is a candidate ear.
CANDIDATE_THRESHOLD = 0.3
#: Candidates closer than this (mm) are the same ear.
SAME_EAR_MM = 20.0
#: Below this |(apex - base) x (rw - base)| (mm^2; real cochleae give 10-20) the side is not named.
MIN_TRIANGLE_MM2 = 1.0
#: At most this many candidates are checked by the local passes.
MAX_CANDIDATES = 4


def _world_extent(image: Image) -> np.ndarray:
    lo, hi = image.world_bounds()
    return np.abs(np.asarray(hi) - np.asarray(lo))


def _merge(candidates: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    kept: list[tuple[np.ndarray, float]] = []
    for point, score in sorted(candidates, key=lambda c: -c[1]):
        if all(np.linalg.norm(point - k) >= SAME_EAR_MM for k, _ in kept):
            kept.append((point, score))
    return kept[:MAX_CANDIDATES]


def global_candidates(image: Image, detector: Detector3D) -> tuple[list[tuple[np.ndarray, float]], dict[str, Any]]:
    """Candidate ears (RAS, score) from the global pass over the whole volume, and its heat as an Image."""
    stage = detector.stages["global"]
    pooled, matrix = pooled_for_spacing(image.array, image.ijk_to_ras, stage.spacing_mm)
    cube, edge = volume_cube(matrix, pooled.shape, stage.spacing_mm)
    x = sample_cubes(pooled, matrix, [cube], edge, whole_volume_window(pooled), device=detector.device)
    heat, disp = run_pass(detector, "global", x)
    candidates = []
    separation = max(1, int(round(SAME_EAR_MM / (stage.spacing_mm * OUTPUT_STRIDE))))
    for index, score in heat_peaks(heat[0, 0], CANDIDATE_THRESHOLD, separation, MAX_CANDIDATES):
        ijk, _ = readout_cells(heat[0, 0], disp[0, 0], peak_index=index)
        candidates.append((cube_points_to_ras(cube, ijk)[0], score))
    return _merge(candidates), {"heat": heat_image(heat[0, 0], cube), "cells": heat[0, 0].size}


def tiled_candidates(image: Image, detector: Detector3D) -> tuple[list[tuple[np.ndarray, float]], dict[str, Any]]:
    """Candidate ears from the coarse pass tiled over a small volume (see the module docstring)."""
    stage = detector.stages["coarse"]
    lo, hi = image.world_bounds()
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    axes = []
    for a in range(3):
        n = max(1, int(np.ceil((hi[a] - lo[a]) / TILE_STEP_MM)))
        axes.append(lo[a] + (np.arange(n) + 0.5) * (hi[a] - lo[a]) / n)
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    window = intensity_window(image.array, image.ijk_to_ras, image.center_ras(), float(np.max(hi - lo)) / 2.0)
    cubes = [cube_ijk_to_ras(c, stage.size, stage.spacing_mm) for c in centres]
    x = sample_cubes(image.array, image.ijk_to_ras, cubes, stage.size, window, device=detector.device)
    heat, disp = run_pass(detector, "coarse", x)
    ch = stage.channels.index("Modiolus base")
    candidates = []
    for b, cube in enumerate(cubes):
        ijk, peak = readout_cells(heat[b, ch], disp[b, ch])
        if peak >= CANDIDATE_THRESHOLD:
            candidates.append((cube_points_to_ras(cube, ijk)[0], peak))
    return _merge(candidates), {"tiles": len(cubes)}


def find_candidates(image: Image, detector: Detector3D, progress: Progress | None = None
                    ) -> tuple[list[tuple[np.ndarray, float]], dict[str, Any]]:
    """Candidate ears (strongest first) by the global pass or by tiling, with ``how`` and timing."""
    prog = Progress.ensure(progress)
    t = time.perf_counter()
    small = bool(np.all(_world_extent(image) <= SMALL_VOLUME_MM))
    if small:
        prog.update(0.0, "Searching the volume with the coarse pass")
        found, info = tiled_candidates(image, detector)
        info["how"] = "tiled coarse pass"
    else:
        if not detector.seed_free:
            from CochleaCommonLib.errors import ModelWeightsError

            raise ModelWeightsError(f"Model '{detector.model_id}' has no global pass, so it cannot search a head CT "
                                    "without a seed: place a seed, or use a detector trained with --heads "
                                    "(detector-phantom has one).")
        prog.update(0.0, "Global pass over the whole volume")
        found, info = global_candidates(image, detector)
        info["how"] = "global pass at 2 mm"
    info["seconds"] = time.perf_counter() - t
    return found, info


def side_of_ear(positions: dict[str, np.ndarray | None]) -> str | None:
    """``left`` / ``right`` from the landmark triangle's handedness (module docstring); None without all three."""
    apex, base, rw = (positions.get(n) for n in ("Helicotrema", "Modiolus base", "Round Window"))
    if apex is None or base is None or rw is None:
        return None
    normal = np.cross(np.asarray(apex) - base, np.asarray(rw) - base)
    norm = float(np.linalg.norm(normal))
    if norm < MIN_TRIANGLE_MM2:
        return None  # landmarks (nearly) on a line: no handedness to read
    return "left" if normal[2] / norm > 0 else "right"
