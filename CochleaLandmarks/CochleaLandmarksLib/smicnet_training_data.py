"""Load annotated volumes for SMICNet training: the network's grid (LPS axes, 0.3 mm) around the landmarks.

Why a crop: the patch sampler only ever looks at patches centred within ``background_extent_mm``
of the landmark centroid, rotated about their centre, so only a box of about
``2 * (extent + patch reach)`` is needed. Resampling just that box to 0.3 mm keeps a 512^3 CT at a
few tens of MB and makes loading 30 cases take seconds.

Each volume goes through the same steps as at inference (seed-methods.md 1.2, ``smicnet_sweep``):

1. the authors' metal test on the whole raw volume; voxels above its threshold are set to 0
   (applied to the crop before any interpolation, which is the same point-wise operation);
2. exact reorientation to LPS array axes (``image_ops.reorient``, no interpolation);
3. crop around the landmark centroid (trimmed at the volume border: outside the volume there is no
   data; the sampler pads there with the volume minimum, as the inference pads with the ROI minimum);
4. linear resampling to 0.3 mm isotropic, only when the spacing differs (as inference does);
5. a global min-max to [0, 1] (float32) using the whole volume's minimum and metal-zeroed maximum.
   The per-patch min-max of the network input cancels this affine map; it only gives the noise and
   intensity augmentations the same units as the authors' (globally normalised) images, and makes
   the padding value 0.

Landmarks are kept as continuous (i, j, k) indices of the crop, in :data:`CLASS_NAMES` order.
The array stays in our KJI order: SMICNet's ``vol[i, j, k]`` is ``array.T``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from CochleaCommonLib.errors import CochleaError, InputFileError, InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import crop_around, reorient, resample_to_spacing
from CochleaCommonLib.progress import Progress

from .landmark_dataset import LandmarkCase, find_landmark_cases, read_ground_truth
from .smicnet_model import CLASS_NAMES, PATCH_SIZE, SPACING_MM
from .smicnet_preprocess import metal_artifact_stats, zero_metal_artifacts

log = logging.getLogger(__name__)

LANDMARK_NAMES = tuple(CLASS_NAMES[:3])
HALF = PATCH_SIZE // 2  # 40
#: Background patches are centred up to this far (mm, per axis) from the landmark centroid. It must cover every
#: place inference looks: the fast sweep searches a 21 mm cube around a click that may be ~5 mm off the
#: centroid, i.e. up to 10.5 + 5 mm away; patches never seen as background there become false landmarks.
DEFAULT_BACKGROUND_EXTENT_MM = 16.0
#: Largest scale jitter the sampler may apply; the crop is made large enough for it.
MAX_SCALE = 1.1
SPACING_TOLERANCE = 0.01  # relative; within it no resampling (as in smicnet_sweep)


@dataclass(frozen=True)
class TrainingVolume:
    """One case on the network grid, ready for the patch sampler.

    Attributes:
        case_id: the case name (volume file stem).
        array: float32 ``[k, j, i]`` on LPS-ordered axes at 0.3 mm, globally normalised to [0, 1].
        ijk_to_ras: the crop's 4x4 IJK-to-RAS matrix.
        landmarks_ijk: ``(3, 3)`` continuous (i, j, k) crop indices of Helicotrema, Modiolus base, Round Window.
        background_lo, background_hi: (i, j, k) index bounds of the region where background centres are drawn
            (the box of +-``background_extent_mm`` around the centroid, inside the volume).
        source_spacing_mm: the original voxel size (i, j, k) of the file.
        metal_zeroed: whether the authors' metal test triggered on this volume.
        structure_ijk: ``(M, 3)`` voxel indices in the background region with strong edges (see
            :func:`structure_points`), where "structure" background patches are drawn.
        mined_ijk: ``(P, 3)`` continuous indices where an earlier model scored a landmark wrongly (see
            :mod:`smicnet_mining`), where "mined" background patches are drawn; empty unless mining.
    """

    case_id: str
    array: np.ndarray
    ijk_to_ras: np.ndarray
    landmarks_ijk: np.ndarray
    background_lo: np.ndarray
    background_hi: np.ndarray
    source_spacing_mm: tuple[float, float, float]
    metal_zeroed: bool
    structure_ijk: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.float32))
    mined_ijk: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.float32))

    def describe(self) -> dict:
        """A JSON-friendly summary for the weight file's metadata."""
        return {"case_id": self.case_id, "crop_shape_ijk": [int(n) for n in self.array.shape[::-1]],
                "source_spacing_mm": [round(float(s), 6) for s in self.source_spacing_mm],
                "metal_zeroed": bool(self.metal_zeroed)}


def patch_reach_vox(scale_max: float = MAX_SCALE) -> float:
    """Farthest distance (voxels) of a patch pixel from its centre, at any rotation and scale <= ``scale_max``.

    The centre (the landmark) sits at pixel 40 for our models or 41 when fine-tuning the authors' weights
    (their convention is kept, see ``PatchSampler``), so a pixel lies up to 41 pixels from it along each axis.
    """
    return float(np.sqrt(2.0) * (HALF + 1) * scale_max)


def structure_points(array: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, quantile: float = 0.9,
                     max_points: int = 100_000, seed: int = 0) -> np.ndarray:
    """Voxels (i, j, k) of the box ``lo..hi`` whose gradient magnitude is in the top ``1 - quantile``.

    Why: a sliding window classifies every voxel near the ear, and its false landmarks sit on structures
    that look like the cochlea (on the phantoms: the semicircular canals, 10 mm from the cochlea, found
    as a larger "Helicotrema" island than the real one). Uniform background sampling visits such thin
    structures rarely; drawing part of the background on strong edges (bone/fluid/air boundaries)
    visits them about ten times more often. Up to ``max_points`` are kept (a fixed random subset).
    """
    a = np.asarray(array, dtype=np.float32)
    i0, j0, k0 = (int(np.ceil(v)) for v in lo)
    i1, j1, k1 = (int(np.floor(v)) + 1 for v in hi)
    box = a[k0:k1, j0:j1, i0:i1]
    if min(box.shape) < 3:
        return np.zeros((0, 3), dtype=np.float32)
    gk, gj, gi = np.gradient(box)
    magnitude = np.sqrt(gk * gk + gj * gj + gi * gi)
    peak = float(magnitude.max())
    if peak <= 0:
        return np.zeros((0, 3), dtype=np.float32)
    # a volume with few edges has a zero quantile: then every voxel with any edge counts
    threshold = max(float(np.quantile(magnitude, quantile)), 1e-6 * peak)
    kji = np.argwhere(magnitude > threshold)
    if len(kji) > max_points:
        kji = kji[np.random.default_rng(seed).choice(len(kji), max_points, replace=False)]
    return (kji[:, ::-1] + np.array([i0, j0, k0])).astype(np.float32)


def _nrrd_header_has_spacing(path: Path) -> bool:
    """Whether a NRRD header defines a spacing (used only when pynrrd is not installed)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputFileError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    header = head.split(b"\n\n", 1)[0].decode("latin-1", errors="replace").lower()
    return "space directions:" in header or "spacings:" in header


def read_volume(path: str | os.PathLike) -> Image:
    """Read a volume with :func:`image_io.read_image`; without pynrrd, read NRRD through SimpleITK directly.

    Why the fallback: ``read_image`` checks NRRD headers with pynrrd, which a bare GPU training machine
    may lack; SimpleITK reads the file either way, and the spacing check is redone here on the header text.
    """
    from CochleaCommonLib.image_io import image_from_sitk, read_image

    p = Path(path)
    try:
        return read_image(p)
    except ModuleNotFoundError as exc:
        if exc.name != "nrrd":
            raise
    if not _nrrd_header_has_spacing(p):
        raise InvalidInputError(f"{p.name} has no voxel spacing ('space directions' or 'spacings' missing in its "
                                "header); re-export the volume with its geometry.")
    import SimpleITK as sitk

    try:
        return image_from_sitk(sitk.ReadImage(str(p)))
    except RuntimeError as exc:
        raise InputFileError(f"{p.name} could not be read as a volume ({str(exc).strip().splitlines()[-1]}).") from exc


def _global_range(raw: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """Minimum and maximum of the whole volume after metal zeroing (zeroed voxels become 0)."""
    lo = float(np.min(raw))
    if threshold is None:
        return lo, float(np.max(raw))
    kept = raw[raw < threshold]
    hi = float(kept.max()) if kept.size else 0.0
    return min(lo, 0.0), max(hi, 0.0)


def prepare_volume(image: Image, landmarks_ras: dict[str, np.ndarray], case_id: str = "case", *,
                   background_extent_mm: float = DEFAULT_BACKGROUND_EXTENT_MM,
                   scale_max: float = MAX_SCALE) -> TrainingVolume:
    """Put one annotated image on the network grid (see the module docstring); pure, for tests and loaders.

    ``landmarks_ras`` must hold the three landmark names; each must lie inside the volume.
    """
    missing = [n for n in LANDMARK_NAMES if n not in landmarks_ras]
    if missing:
        raise InvalidInputError(f"Case '{case_id}' has no landmark {', '.join(repr(m) for m in missing)}; "
                                f"label the points {', '.join(repr(n) for n in LANDMARK_NAMES)}.")
    points = np.array([np.asarray(landmarks_ras[n], dtype=np.float64).reshape(3) for n in LANDMARK_NAMES])
    if not np.all(np.isfinite(points)):
        raise InvalidInputError(f"Case '{case_id}' has a landmark with a non-finite position.")
    inside = image.contains_index(image.ras_to_continuous_index(points))
    if not np.all(inside):
        bad = [n for n, ok in zip(LANDMARK_NAMES, inside) if not ok]
        raise InvalidInputError(f"In case '{case_id}' the landmark(s) {', '.join(bad)} lie outside the volume; "
                                "check that the landmark file belongs to this volume (and its coordinate system).")
    if background_extent_mm <= 0:
        raise InvalidInputError(f"background_extent_mm must be positive, got {background_extent_mm}.")

    stats = metal_artifact_stats(image.array)
    lo, hi = _global_range(image.array, stats.threshold)
    source_spacing = tuple(float(s) for s in image.spacing)

    centroid = points.mean(axis=0)
    spread_mm = float(np.max(np.linalg.norm(points - centroid, axis=1)))
    half_mm = max(background_extent_mm, spread_mm + 1.0) + patch_reach_vox(scale_max) * SPACING_MM + 1.0
    lps = reorient(image, "LPS")
    margin = 2.0 * float(np.max(lps.spacing))
    crop = crop_around(lps, centroid, 2.0 * (half_mm + margin), pad_value=None)
    raw = zero_metal_artifacts(crop.array.astype(np.float32), stats, in_place=True)
    local = crop.with_array(raw)
    if not np.all(np.abs(local.spacing - SPACING_MM) <= SPACING_TOLERANCE * SPACING_MM):
        local = resample_to_spacing(local, SPACING_MM, default_value=lo)
    scale = hi - lo if hi > lo else 1.0
    array = ((np.asarray(local.array, dtype=np.float32) - np.float32(lo)) / np.float32(scale)).astype(np.float32)

    landmarks_ijk = local.ras_to_continuous_index(points)
    shape = np.array(local.shape_ijk, dtype=np.float64)
    c = local.ras_to_continuous_index(centroid).reshape(3)
    extent = background_extent_mm / SPACING_MM
    bg_lo = np.maximum(c - extent, 0.0)
    bg_hi = np.minimum(c + extent, shape - 1.0)
    if np.any(bg_hi <= bg_lo) or np.any(shape < 2):
        raise InvalidInputError(f"Case '{case_id}' is too small around its landmarks to sample training patches.")
    return TrainingVolume(case_id=case_id, array=np.ascontiguousarray(array), ijk_to_ras=local.ijk_to_ras.copy(),
                          landmarks_ijk=landmarks_ijk, background_lo=bg_lo, background_hi=bg_hi,
                          source_spacing_mm=source_spacing, metal_zeroed=bool(stats.triggered),
                          structure_ijk=structure_points(array, bg_lo, bg_hi))


def load_case(case: LandmarkCase, *, background_extent_mm: float = DEFAULT_BACKGROUND_EXTENT_MM,
              scale_max: float = MAX_SCALE) -> TrainingVolume:
    """Read one case's volume and landmarks from disk and prepare it (:func:`prepare_volume`)."""
    try:
        truth = read_ground_truth(case.landmarks_path)
    except InvalidInputError as exc:
        raise InvalidInputError(f"Case '{case.case_id}': {exc}") from exc
    image = read_volume(case.volume_path)
    return prepare_volume(image, truth, case.case_id, background_extent_mm=background_extent_mm,
                          scale_max=scale_max)


def resolve_cases(data: str | os.PathLike | Iterable[LandmarkCase]) -> list[LandmarkCase]:
    """A folder (searched with :func:`find_landmark_cases`) or an explicit list of cases."""
    if isinstance(data, (str, os.PathLike)):
        return find_landmark_cases(data)
    cases = list(data)
    if not cases:
        raise InputFileError("No training case was given; pass a folder of volumes with landmark files.")
    if not all(isinstance(c, LandmarkCase) for c in cases):
        raise InvalidInputError("Training data must be a folder or a list of LandmarkCase.")
    return cases


def load_cases(cases: list[LandmarkCase], *, progress: Progress | None = None,
               background_extent_mm: float = DEFAULT_BACKGROUND_EXTENT_MM,
               scale_max: float = MAX_SCALE) -> list[TrainingVolume]:
    """Load every case (reporting progress); a case that fails names itself in the error."""
    prog = Progress.ensure(progress)
    volumes = []
    for index, case in enumerate(cases):
        prog.update(index / len(cases), f"Loading case {index + 1} of {len(cases)} ({case.case_id})")
        try:
            volumes.append(load_case(case, background_extent_mm=background_extent_mm, scale_max=scale_max))
        except CochleaError as exc:
            if case.case_id in str(exc):
                raise
            raise type(exc)(f"Case '{case.case_id}' ({case.volume_path}): {exc}") from exc
    prog.update(1.0, f"Loaded {len(volumes)} case(s)")
    return volumes
