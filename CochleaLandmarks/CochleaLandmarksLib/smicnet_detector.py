"""SMICNet landmark detection around one seed: model loading, the two sweep modes, and the result.

Why here and not in the sweep: the sweep is geometry (which patch belongs to which voxel); this
module decides the policy around it: which weights, which device, metal zeroing, the box size that
reaches the round window from a rough click, thresholds, and turning maps into points with honest
confidences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from CochleaCommonLib.devices import require_torch, resolve_device
from CochleaCommonLib.image import Image
from CochleaCommonLib.model_registry import ModelRegistry
from CochleaCommonLib.progress import Progress

from .landmark_islands import Island, find_islands, select_consistent
from .landmark_mode import island_mode_ras
from .landmark_result import LANDMARK_NAMES
from .smicnet_model import SPACING_MM
from .smicnet_parity import PARITY_CONNECTIVITY, PARITY_RANGE, PARITY_THRESHOLDS, parity_sweep
from .smicnet_preprocess import metal_artifact_stats, zero_metal_artifacts
from .smicnet_sweep import (
    PatchSource,
    classify_voxels,
    landmarks_from_probabilities,
    runs_on_device,
    smicnet_classifier,
    sweep_coarse_to_fine,
)
from .smicnet_views import ALL_VIEWS

#: Fast mode: the box (edge, mm) of the maps around the seed; the search covers the ball inscribed in it. The
#: round window lies up to ~4.5 mm from the landmark centroid, so a click 5 mm off needs about 9.5 mm of
#: reach; a 10.5 mm radius gives a 1 mm margin.
FAST_BOX_MM = 21.0
#: Fast mode on the CPU scores a body-centred lattice of side 4 (every 4th voxel plus the cube centres) of the ball
#: inscribed in the box, then grows through the voxels where a landmark scores at least FAST_KEEP (see
#: ``sweep_coarse_to_fine``). SMICNet's responses are a voxel or two wide, so what matters is how far a voxel can
#: lie from the lattice: 2.24 voxels here, 1.73 for the cubic stride 3 used before, 3.46 for the cubic stride 4.
#: On 24 development phantoms (seeds 5 and 9), and on seed 9 with the lattice shifted by 1, 2 and 3 voxels, every
#: point equalled the cubic stride 3's, with 8-12 % fewer patches (median 13,800 of 15,600; the dense sweep scores
#: 343,000). The cubic stride 3 itself had matched the dense sweep's points on 8 phantoms, where a cubic stride 4,
#: growth through 0.05 rather than 0.02, and a body-centred side 5 (2.45 voxels; on the 16 phantoms of seed 9,
#: 10 landmarks of 5 cases not found, and 6 of 3 with growth through 0.005) all missed whole islands.
#: Growth to the 26 neighbours: to the 6 face neighbours only, it scored a fifth fewer patches and left all 72 points
#: of the 24 development phantoms unchanged, but on the seed-41 suite it lost a round window (0.08 mm off, confidence
#: 0.98): no lattice voxel fell in that 20-voxel response, which 26-neighbour growth reached through a corner.
FAST_LATTICE = ("bcc", 4)
#: On a GPU (a classifier that runs on its device) the cubic stride 3: there a growth round costs about 1 ms
#: whatever its size, and the sparser lattice seeds fewer voxels of each region, so growth took 35 rounds rather
#: than 12 on the benchmark phantom and the sweep 83 ms rather than 63 (H100, alternated in one process).
FAST_DEVICE_LATTICE = ("cubic", 3)
FAST_KEEP = 0.02
#: Fast mode averages the eight views SMICNet was trained on (sagittal and coronal, four quarter turns each; see
#: smicnet_views) at every voxel where a landmark reached FAST_VIEWS_THRESHOLD in the sagittal sweep. On 24
#: development phantoms (seeds 5 and 9) the apex errors above 1 mm of the sagittal sweep alone (5 of 24, up to
#: 3.1 mm: look-alike islands in the middle turn, or islands pulled off the apex) all went, the worst became
#: 0.75 mm; re-scoring only the voxels above 0.5 left a 1.0 mm case, and the sagittal plane with the coronal alone
#: left two above 1.6 mm. Cost: about 600 voxels x 7 views, a third more patches. The four coronal views come
#: first; a voxel whose mean can then no longer exceed FAST_THRESHOLD skips the three turned sagittal views
#: (smicnet_sweep.average_views_staged: the islands and points are exactly those of all eight views). Replayed on the
#: 24 development phantoms' recorded answers, that skipped 26,600 of their 100,300 view patches (7 % of all patches).
FAST_VIEWS = ALL_VIEWS
FAST_VIEWS_THRESHOLD = 0.1
#: Island threshold per landmark in fast mode.
FAST_THRESHOLD = 0.5
#: Least evidence (summed log-odds) of an island fast mode considers: no gate. An island of the mean over eight views
#: needs that mean above 0.5, and one view's noise adds at most 1/8 to it, so one-view noise islands, what the old
#: gate (4.0) was for, cannot form alone; with it, a modiolus base found 0.2 mm from the truth in a 5-voxel island where
#: the sagittal and coronal views disagreed by a voxel or two was dropped, and with it the whole cochlea.
FAST_MIN_EVIDENCE = 0.0
#: Landmarks whose fast-mode point is the peak of the island's smoothed log-odds rather than its weighted centre:
#: the helicotrema ends the spiral, so its island is one-sided and its centre lies below the apex (landmark_mode).
#: On 16 development phantoms (seed 9) the median apex error went from 0.81 to 0.39 mm; for the modiolus base and
#: the round window, whose islands are not cut off, the peak was no better and once 0.7 mm worse, so they keep
#: the centre.
MODE_READOUT = frozenset({"Helicotrema"})
#: Fast mode trusts the other landmarks only when this one, the centre of the cochlea, is found.
ANCHOR = "Modiolus base"
#: Statistics for the metal test are taken from this cube around the seed in fast mode (whole volume in parity).
FAST_METAL_REGION_MM = 50.0
#: The pixel of an 81x81 patch at which each kind of weights was trained to see the landmark.
AUTHORS_LANDMARK_PIXEL = 41
CENTRE_PIXEL = 40


@dataclass
class LoadedDetector:
    """A model ready to run: keep one and pass it to :func:`detect_smicnet` when looping over many volumes."""

    method: str
    model_id: str
    device: str
    network: Any
    load_seconds: float
    landmark_pixel: int = AUTHORS_LANDMARK_PIXEL
    messages: list[str] = field(default_factory=list)
    #: Whether fast mode on CUDA replays CUDA graphs (see ``smicnet_classifier``); off for a one-shot run.
    cuda_graphs: bool = True
    _classifier: Any = None
    _fast_classifier: Any = None

    @property
    def classifier(self) -> Any:
        """The numpy-in, numpy-out patch classifier in float32 (built once): parity mode and point queries."""
        if self._classifier is None:
            self._classifier = smicnet_classifier(self.network)
        return self._classifier

    @property
    def fast_classifier(self) -> Any:
        """The classifier of fast mode: float16 autocast and (``cuda_graphs``) CUDA graphs on CUDA (see
        ``smicnet_classifier``), else ``classifier``."""
        if self._fast_classifier is None:
            on_cuda = str(self.device).startswith("cuda")
            self._fast_classifier = (smicnet_classifier(self.network, half=True, graphs=self.cuda_graphs) if on_cuda
                                     else self.classifier)
        return self._fast_classifier


def landmark_pixel_of(metadata: dict[str, Any]) -> int:
    """Where the weights expect the landmark: ours record it; the authors' (Keras) put it at pixel 41."""
    source = metadata.get("source") if isinstance(metadata.get("source"), dict) else {}
    for where in (metadata, source):
        value = where.get("landmark_pixel") if isinstance(where, dict) else None
        if value is not None:
            value = value[0] if isinstance(value, (list, tuple)) else value
            return int(value)
    return AUTHORS_LANDMARK_PIXEL


def load_smicnet_detector(model: str, *, device: str = "auto", registry: ModelRegistry | None = None,
                          allow_download: bool = False, progress: Progress | None = None,
                          one_shot: bool = False) -> LoadedDetector:
    """Load SMICNet weights (registry id or file) onto the resolved device, in eval mode.

    ``one_shot`` (see ``landmark_detection.load_detector``): on CUDA, neither cuDNN's autotuning nor CUDA graphs."""
    from .keras_import import load_smicnet_weights

    torch = require_torch()
    start = time.perf_counter()
    choice = resolve_device(device)
    network = load_smicnet_weights(model, registry, allow_download=allow_download, device=choice.name,
                                   progress=progress)
    network.eval()
    metadata = dict(getattr(network, "metadata", {}) or {})
    model_id = metadata.get("model_id") or str(model)
    if choice.name.startswith("cuda") and not one_shot:
        torch.backends.cudnn.benchmark = True
    detector = LoadedDetector("smicnet", str(model_id), choice.name, network, 0.0,
                              landmark_pixel=landmark_pixel_of(metadata),
                              messages=[choice.message] if choice.message else [], cuda_graphs=not one_shot)
    _ = detector.classifier
    detector.load_seconds = time.perf_counter() - start
    return detector


def _metal_preprocess(image: Image, seed_ras: np.ndarray, mode: str) -> tuple[Any, bool]:
    """The authors' metal zeroing as a function on raw regions, with statistics from the whole volume
    (parity) or from a cube around the seed (fast: the ear's own neighbourhood decides, and a 512^3
    head CT costs no full-volume percentile)."""
    from CochleaCommonLib.image_ops import crop_around

    region = image.array if mode == "parity" else crop_around(image, seed_ras, FAST_METAL_REGION_MM).array
    stats = metal_artifact_stats(region)
    if not stats.triggered:
        return None, False
    return (lambda raw: zero_metal_artifacts(raw, stats)), True


def _offset(detector: LoadedDetector, mode: str) -> tuple[int, int, int]:
    """Parity: the authors' centring (patch centred on the voxel). Fast: centre each voxel where the
    weights were trained to see the landmark (pixel 41 for the authors' weights, 40 for ours)."""
    if mode == "parity":
        return (0, 0, 0)
    shift = detector.landmark_pixel - CENTRE_PIXEL
    return (0, shift, shift)


def _fast_position(name: str, prob: Image, island: Island) -> np.ndarray:
    """Fast mode's point for an island: the peak of its smoothed log-odds for the landmarks in
    ``MODE_READOUT`` (see landmark_mode), the authors' probability-weighted centre for the others."""
    return island_mode_ras(prob, island) if name in MODE_READOUT else island.centre_ras


def smicnet_maps(image: Image, seed_ras: np.ndarray, detector: LoadedDetector, *, mode: str, box_mm: float | None,
                 progress: Progress) -> dict[str, Any]:
    """Run the sweep of ``mode``; return maps (box grid), points, confidences, patch count, timings, notes."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preprocess, metal = _metal_preprocess(image, seed_ras, mode)
    timings["preprocess"] = time.perf_counter() - t0
    progress.update(0.05, "Sweeping the patch classifier")
    t1 = time.perf_counter()
    sweep_progress = progress.sub(0.05, 0.9)

    def report(fraction: float) -> None:
        sweep_progress.update(fraction, "Sweeping the patch classifier")

    if mode == "parity":
        maps, patches = parity_sweep(image, seed_ras, detector.classifier, progress=report, preprocess=preprocess)
        thresholds, connectivity = PARITY_THRESHOLDS, PARITY_CONNECTIVITY
        box = 2 * PARITY_RANGE * SPACING_MM
    else:
        box = float(box_mm or FAST_BOX_MM)
        lattice, stride = FAST_DEVICE_LATTICE if runs_on_device(detector.fast_classifier) else FAST_LATTICE
        maps, patches = sweep_coarse_to_fine(image, seed_ras, detector.fast_classifier, box_mm=box,
                                             coarse_stride=stride, lattice=lattice, keep_threshold=FAST_KEEP,
                                             progress=report, centre_offset_vox=_offset(detector, mode),
                                             preprocess=preprocess, views=FAST_VIEWS,
                                             views_threshold=FAST_VIEWS_THRESHOLD, island_threshold=FAST_THRESHOLD)
        thresholds, connectivity = FAST_THRESHOLD, 26
    timings["sweep"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    reasons: dict[str, str] = {}
    if mode == "parity":
        found = landmarks_from_probabilities(maps, thresholds, connectivity=connectivity)
    else:
        islands = {name: find_islands(m, FAST_THRESHOLD, connectivity=connectivity) for name, m in maps.items()}
        chosen = select_consistent(islands, min_evidence=FAST_MIN_EVIDENCE)
        found = {name: (None if isl is None else _fast_position(name, maps[name], isl), conf)
                 for name, (isl, conf) in chosen.items()}
        for name, (isl, _) in chosen.items():
            if isl is None and islands[name]:
                reasons[name] = (f"{len(islands[name])} region(s) scored above {FAST_THRESHOLD:g} for {name}, but none "
                                 "of the strongest lies at an anatomically possible distance and angle from the other "
                                 "landmarks")
        if found[ANCHOR][0] is None and any(position is not None for position, _ in found.values()):
            # Without the modiolus base, the centre of the cochlea, other "landmarks" are mostly look-alikes
            # (canals, ossicles) around a seed placed beside the cochlea: report nothing rather than guess.
            others = [name for name, (position, _) in found.items() if position is not None]
            for name in others:
                reasons[name] = (f"a region scored as {name}, but the {ANCHOR}, the centre of the cochlea, was not "
                                 "found near it, so it is not trusted")
                found[name] = (None, 0.0)
            base = reasons.get(ANCHOR, f"no region scored above {FAST_THRESHOLD:g} for {ANCHOR}")
            verb = "is" if len(others) == 1 else "are"
            reasons[ANCHOR] = (f"{base}; the {ANCHOR} is the centre of the cochlea, so the {' and '.join(others)} "
                               f"found without it {verb} not trusted")
    timings["extract"] = time.perf_counter() - t2
    notes = ["Metal artefacts were detected; voxels brighter than the metal threshold were set to 0 (as the "
             "SMICNet authors do)."] if metal else []
    return {"maps": maps, "found": found, "patches": patches, "timings": timings, "box_mm": box, "notes": notes,
            "thresholds": thresholds, "reasons": reasons}


def classify_points(detector: LoadedDetector, image: Image, points_ras: np.ndarray, *,
                    batch_size: int | None = None) -> np.ndarray:
    """Softmax ``(N, 4)`` for the sagittal patch at each RAS point (nearest voxel of the LPS 0.3 mm grid).

    The patch is placed as in fast mode (where the weights expect the landmark), so a ground-truth
    landmark should score as its class. Used for patch-level F1 in evaluation.
    """
    pts = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(pts), 4), dtype=np.float32)
    for n, p in enumerate(pts):
        source = PatchSource(image, p, 1, centre_offset_vox=_offset(detector, "fast"))
        out[n] = classify_voxels(source, detector.classifier, np.zeros((1, 3), dtype=np.int64),
                                 batch_size=batch_size)[0]
    return out


__all__ = ["FAST_BOX_MM", "LANDMARK_NAMES", "LoadedDetector", "classify_points", "landmark_pixel_of",
           "load_smicnet_detector", "smicnet_maps"]
