"""SMICNet sliding-window inference around a seed: per-class probability volumes and landmark points.

Why: SMICNet classifies one 81x81 sagittal patch at a time (seed-methods.md 1.3). Locating a landmark
means classifying the patch of every voxel in a box around a seed, in the network's own array
convention (axes increasing towards L, P, S at 0.3 mm), then turning the probability maps back into
world (RAS) points. This module does that geometry once, exactly, for any volume orientation and
spacing; the classifier is a plain callable so the geometry can be tested with an oracle.

Conventions:
* SMICNet's ``vol[i, j, k]`` is our :class:`Image` reoriented to LPS, with the KJI array transposed.
* The patch of centre ``c`` is ``vol[c_i, c_j-40 : c_j+41, c_k-40 : c_k+41]``: rows j, columns k,
  centre pixel (40, 40); never transposed.
* ``centre_offset_vox`` (i, j, k): the probability stored at box voxel ``v`` is the classifier's
  answer for the patch centred at ``v - centre_offset_vox``. ``(0, 0, 0)`` replicates the published
  inference exactly, including its one-voxel bias (the network was trained with the landmark at
  pixel (41, 41)). The default ``(0, 1, 1)`` corrects it: voxel ``v`` then sits at pixel (41, 41)
  of its patch, as in training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import crop_around, crop_box, reorient, resample_to_spacing
from numpy.lib.stride_tricks import sliding_window_view

from .smicnet_model import CLASS_NAMES, PATCH_SIZE, SPACING_MM
from .smicnet_preprocess import quantize_patches

HALF = PATCH_SIZE // 2  # 40
LANDMARK_NAMES = tuple(CLASS_NAMES[:3])
SPACING_TOLERANCE = 0.01  # relative; within it the volume is used as is (no interpolation)

Classifier = Callable[[np.ndarray], Any]


def _network_grid(image: Image, seed_ras: np.ndarray, extent_mm: np.ndarray) -> Image:
    """The volume reoriented to LPS and, where needed, resampled to 0.3 mm (only near the seed)."""
    lps = reorient(image, "LPS")
    spacing = lps.spacing
    if np.all(np.abs(spacing - SPACING_MM) <= SPACING_TOLERANCE * SPACING_MM):
        return lps
    # Resample only a region a few voxels larger than needed; trimmed at the volume's border.
    local = crop_around(lps, seed_ras, extent_mm + 4.0 * spacing, pad_value=None)
    local = local.with_array(local.array.astype(np.float32, copy=False))
    return resample_to_spacing(local, SPACING_MM)


def smicnet_classifier(model: Any) -> Classifier:
    """Adapt a SMICNet model (``build_smicnet``) to the numpy-in, numpy-out classifier the sweep calls.

    Patches go to the model's device as a tensor; probabilities come back as a float32 numpy array.
    """
    import torch

    device = next(model.parameters()).device

    def classify(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        return model.predict_proba(x).detach().cpu().numpy().astype(np.float32)

    return classify


def sweep_probabilities(
    image: Image,
    seed_ras,
    classifier: Classifier,
    *,
    box_mm: float = 10.0,
    batch_size: int = 256,
    progress: Callable[[float], Any] | None = None,
    centre_offset_vox=(0, 1, 1),
) -> dict[str, Image]:
    """Classify the sagittal patch of every voxel of a cube of ``box_mm`` around ``seed_ras``.

    Args:
        image: the CT / CBCT volume, any orientation and spacing.
        seed_ras: approximate landmark position (RAS mm); must lie inside the volume.
        classifier: ``f(batch) -> (N, 4)`` class probabilities (``CLASS_NAMES`` order) for a float32
            batch shaped ``(N, 1, 81, 81)`` (NCHW, H = j, W = k), already quantised as Keras does.
            For SMICNet pass ``smicnet_classifier(model)``. It may return a numpy array or a torch tensor.
        box_mm: edge of the searched cube, in mm (rounded to whole 0.3 mm voxels).
        batch_size: patches per classifier call.
        progress: called with the fraction done (0..1) after each batch; it may raise
            ``OperationCancelled`` to stop.
        centre_offset_vox: see the module docstring; ``(0, 0, 0)`` for exact parity with the paper.

    Returns:
        One float32 probability :class:`Image` per landmark (``CLASS_NAMES[:3]``), all on the same
        box grid (LPS-ordered axes, 0.3 mm) with correct IJK-to-RAS.
    """
    seed = np.asarray(seed_ras, dtype=np.float64).reshape(3)
    offset = np.asarray(centre_offset_vox, dtype=np.int64).reshape(3)
    if not np.all(np.isfinite(seed)):
        raise InvalidInputError("The seed point must be a finite RAS position.")
    if not np.isfinite(box_mm) or box_mm <= 0:
        raise InvalidInputError(f"The search box must be positive, got {box_mm} mm.")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}.")

    n = max(1, int(round(box_mm / SPACING_MM)))
    margin = np.abs(offset) + np.array([0, HALF, HALF])  # per axis i, j, k
    roi_size = n + 2 * margin
    vol_img = _network_grid(image, seed, roi_size * SPACING_MM)

    trimmed = crop_box(vol_img, seed, roi_size, pad_value=None)
    pad = float(np.min(trimmed.array))
    roi = crop_box(vol_img, seed, roi_size, pad_value=pad)
    vol = roi.array.transpose(2, 1, 0)  # SMICNet's vol[i, j, k]

    # windows[i, a, b] = vol[i, a:a+81, b:b+81] (centre a+40, b+40); a view, nothing copied.
    windows = sliding_window_view(vol, (PATCH_SIZE, PATCH_SIZE), axis=(1, 2))
    # Box voxel v has ROI index v + margin and patch centre v + margin - offset.
    first = margin - offset - np.array([0, HALF, HALF])
    windows = windows[first[0]:first[0] + n, first[1]:first[1] + n, first[2]:first[2] + n]

    total = n ** 3
    probs = np.zeros((total, len(CLASS_NAMES)), dtype=np.float32)
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))
        ii, jj, kk = np.unravel_index(flat, (n, n, n))
        batch = quantize_patches(windows[ii, jj, kk])[:, None, :, :]
        out = classifier(np.ascontiguousarray(batch, dtype=np.float32))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(flat), len(CLASS_NAMES)):
            raise InvalidInputError(
                f"The classifier returned shape {out.shape}; expected ({len(flat)}, {len(CLASS_NAMES)})."
            )
        probs[flat] = out
        if progress is not None:
            progress(float(flat[-1] + 1) / total)

    box_geometry = roi.ijk_to_ras.copy()
    box_geometry[:3, 3] = roi.index_to_ras(margin.astype(np.float64))
    probs_ijk = probs.reshape(n, n, n, len(CLASS_NAMES))
    return {
        name: Image(np.ascontiguousarray(probs_ijk[..., c].transpose(2, 1, 0)), box_geometry.copy())
        for c, name in enumerate(LANDMARK_NAMES)
    }


def landmarks_from_probabilities(
    prob_images: dict[str, Image], threshold: float = 0.5
) -> dict[str, tuple[np.ndarray | None, float]]:
    """Per landmark: the probability-weighted centre of mass of the largest 26-connected island of
    voxels above ``threshold``, in RAS mm, and a confidence (the island's peak probability).

    ``(None, 0.0)`` when no voxel exceeds the threshold.
    """
    import SimpleITK as sitk

    result: dict[str, tuple[np.ndarray | None, float]] = {}
    for name, img in prob_images.items():
        p = np.asarray(img.array, dtype=np.float64)
        mask = p > threshold
        if not mask.any():
            result[name] = (None, 0.0)
            continue
        cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        labels = sitk.GetArrayFromImage(sitk.RelabelComponent(cc))  # 1 = largest island
        island = labels == 1
        w = np.where(island, p, 0.0)
        kji = np.array(np.nonzero(island), dtype=np.float64)
        weights = p[island]
        centre_kji = (kji * weights).sum(axis=1) / weights.sum()
        ras = img.index_to_ras(centre_kji[::-1])
        result[name] = (np.asarray(ras, dtype=np.float64).reshape(3), float(w.max()))
    return result
