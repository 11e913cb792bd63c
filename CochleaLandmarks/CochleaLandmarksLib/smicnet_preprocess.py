"""The SMICNet authors' input preprocessing, bit-exact: per-patch quantisation and volume-level metal zeroing.

Why bit-exact: the published weights were trained (and the published errors measured) on patches
that went through Keras ``img_to_array(array_to_img(patch)) / 255``. That is a per-patch min-max
normalisation followed by *truncation* to 256 grey levels, so two patches differing by rounding can
land on different levels; only the same float32 operations in the same order reproduce the network
input exactly (seed-methods.md section 1.3). In float32, for every patch ``x``::

    x -= min(x);  m = max(x);  x /= m if m != 0;  x *= 255;  x = uint8(x)  (truncation);  x = x / 255

A constant patch becomes all zeros. Division by ``m`` is skipped for a constant patch by dividing by 1,
which is exact, so no branch per patch is needed and the batch stays vectorised.

Two implementations give identical bits: :func:`quantize_patches` (numpy, CPU) and
:func:`quantize_patches_torch` (any torch device; float32 division and truncation are IEEE-exact there
too). Both work on any leading batch shape; the last two axes are one patch (rows j, columns k).

Volume level (section 1.2 step 3): when a volume's 99.9th intensity percentile exceeds 6x its 95th,
the authors treat it as containing metal and set every voxel >= mean + 4 std (whole-volume statistics,
on raw intensities) to the raw value 0. :func:`metal_artifact_stats` measures this on the whole volume
once; :func:`zero_metal_artifacts` applies it to the volume or to any region of interest cut from it, so
inference can work in a small box while keeping the authors' whole-volume decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Number of grey levels minus one: Keras scales to [0, 255] and casts to uint8.
LEVELS = 255
#: The authors' metal test: percentile(99.9) > RATIO * percentile(95); then zero >= mean + SIGMAS * std.
METAL_RATIO = 6.0
METAL_SIGMAS = 4.0
#: Elements per chunk when computing whole-volume statistics (bounds temporary memory to ~32 MB).
_STATS_CHUNK = 1 << 22


def quantize_patches(patches: np.ndarray) -> np.ndarray:
    """Keras ``array_to_img`` -> ``img_to_array`` -> ``/255`` for a batch of patches, as float32.

    ``patches``: ``(..., H, W)`` of any real dtype (converted to float32 first, as Keras does). Returns a
    new float32 array of the same shape with values in {0, 1/255, ..., 1}. Non-finite values are not
    meaningful input (Keras' cast of NaN to uint8 is undefined) and raise ``ValueError``.
    """
    x = np.array(patches, dtype=np.float32, copy=True)
    if x.ndim < 2:
        raise ValueError(f"patches must have at least 2 dimensions (..., rows, columns); got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError("patches contain NaN or infinite values; SMICNet's preprocessing is undefined for them")
    axes = (-2, -1)
    x -= x.min(axis=axes, keepdims=True)
    peak = x.max(axis=axes, keepdims=True)
    peak[peak == 0] = 1  # a constant patch: Keras skips the division; dividing by 1 is the same, exactly
    x /= peak
    x *= np.float32(LEVELS)
    levels = x.astype(np.uint8)  # truncation toward zero (values are in [0, 255])
    return levels.astype(np.float32) / np.float32(LEVELS)


def quantize_patches_torch(patches: Any) -> Any:
    """The same preprocessing as :func:`quantize_patches` on a torch tensor, on its own device (e.g. a GPU).

    Returns a new float32 tensor bit-identical to the numpy result for the same input.
    """
    from CochleaCommonLib.devices import require_torch

    torch = require_torch()
    x = patches.to(torch.float32, copy=True)
    if x.ndim < 2:
        raise ValueError(f"patches must have at least 2 dimensions (..., rows, columns); got shape {tuple(x.shape)}")
    flat = x.reshape(*x.shape[:-2], -1)
    x -= flat.amin(dim=-1)[..., None, None]
    peak = x.reshape(*x.shape[:-2], -1).amax(dim=-1)[..., None, None]
    peak = torch.where(peak == 0, torch.ones_like(peak), peak)
    x /= peak
    x *= LEVELS
    return x.to(torch.uint8).to(torch.float32) / LEVELS


@dataclass(frozen=True)
class MetalArtifactStats:
    """The authors' whole-volume metal test and the threshold it implies.

    ``triggered`` is ``p999 > 6 * p95``; then voxels ``>= threshold`` (``mean + 4 std``) are set to 0.
    Note the authors' test is unconditional in sign: a volume whose 95th percentile is negative
    (mostly air) always triggers. That is kept for parity; the threshold is then still mean + 4 std.
    """

    p95: float
    p999: float
    mean: float
    std: float
    triggered: bool

    @property
    def threshold(self) -> float | None:
        """Intensity at and above which voxels are zeroed, or None when the test did not trigger."""
        return self.mean + METAL_SIGMAS * self.std if self.triggered else None


def metal_artifact_stats(volume: np.ndarray) -> MetalArtifactStats:
    """Measure the authors' metal test on a whole volume of raw intensities (any shape and real dtype).

    Percentiles use numpy's default linear interpolation as the authors did; mean and (population)
    standard deviation are accumulated in float64 over chunks, so a 512x512x400 CT needs no full-size
    float64 temporary (they agree with ``volume.mean()`` / ``volume.std()`` to float64 rounding). The
    percentiles need one working copy of the volume in its own dtype (200 MB for 512x512x400 int16).
    """
    data = np.asarray(volume)
    if data.size == 0:
        raise ValueError("the volume is empty")
    flat = data.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, _STATS_CHUNK):
        total += float(flat[start:start + _STATS_CHUNK].sum(dtype=np.float64))
    mean = total / flat.size
    if not np.isfinite(mean):
        raise ValueError("the volume contains NaN or infinite intensities")
    p95, p999 = (float(v) for v in np.percentile(flat, [95.0, 99.9]))
    squares = 0.0
    for start in range(0, flat.size, _STATS_CHUNK):
        dev = flat[start:start + _STATS_CHUNK].astype(np.float64) - mean
        squares += float(np.dot(dev, dev))
    std = (squares / flat.size) ** 0.5
    return MetalArtifactStats(p95=p95, p999=p999, mean=mean, std=std, triggered=p999 > METAL_RATIO * p95)


def zero_metal_artifacts(array: np.ndarray, stats: MetalArtifactStats, *, in_place: bool = False) -> np.ndarray:
    """Set voxels ``>= stats.threshold`` to the raw value 0 (not the minimum: 0 is water in HU data).

    ``array`` is the volume the stats were measured on or any region cut from it. Returns ``array``
    itself when ``in_place`` (or when the test did not trigger and ``in_place``), else a copy.
    """
    out = array if in_place else np.array(array, copy=True)
    threshold = stats.threshold
    if threshold is not None:
        out[out >= threshold] = 0
    return out
