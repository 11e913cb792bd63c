"""The 3D detector around one seed: load the weights, run the coarse and fine passes, return points and maps.

Why two passes: one coarse cube (30 mm at 0.75 mm) reaches every landmark from a click up to 8 mm off
in a single forward pass; then one batch of three fine cubes (8 mm at 0.25 mm), each centred on a coarse
estimate, puts each landmark to a fraction of a voxel. Both are the same small network
(:mod:`detector_model`) with their own weights; :mod:`detector_readout` turns heat and displacement
into points. The result dict has the keys of :func:`smicnet_detector.smicnet_maps`, so
:func:`landmark_detection.detect_landmarks` treats both methods alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from CochleaCommonLib.devices import require_torch, resolve_device
from CochleaCommonLib.errors import ModelWeightsError
from CochleaCommonLib.image import Image
from CochleaCommonLib.model_registry import ModelRegistry
from CochleaCommonLib.progress import Progress

from .detector_geometry import cube_ijk_to_ras, cube_points_to_ras, intensity_window, sample_cubes
from .detector_model import OUTPUT_STRIDE
from .detector_readout import readout_cells
from .detector_stages import StageGeometry
from .detector_weights import DETECTOR_FORMAT, load_detector_weights
from .landmark_result import LANDMARK_NAMES

#: A channel whose peak heat is below this has found nothing.
PRESENT_THRESHOLD = 0.3
#: A fine answer further than this from its coarse estimate is not trusted (the fine cube's reach).
FINE_REACH_MM = 3.0
#: The other landmarks are trusted only with this one, the centre of the cochlea (as in SMICNet fast mode).
ANCHOR = "Modiolus base"


@dataclass
class Detector3D:
    """Loaded 3D-detector passes; keep one and pass it to :func:`detect_landmarks` to process many volumes."""

    model_id: str
    device: str
    networks: dict[str, Any]
    stages: dict[str, StageGeometry]
    load_seconds: float
    source: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    method: str = "detector"

    @property
    def seed_free(self) -> bool:
        """Whether the weights include the global pass that finds the cochleae without a seed."""
        return "global" in self.networks


def load_3d_detector(model: str, *, device: str = "auto", registry: ModelRegistry | None = None,
                     allow_download: bool = False, progress: Progress | None = None,
                     one_shot: bool = False) -> Detector3D:
    """Load detector weights (registry id or ``.pt`` file) onto the resolved device, in eval mode.

    ``one_shot`` (see ``landmark_detection.load_detector``): on CUDA, no cuDNN autotuning."""
    torch = require_torch()
    start = time.perf_counter()
    reg = registry if registry is not None else ModelRegistry.load()
    found = reg.locate(model, allow_download=allow_download, progress=progress)
    if found.entry is not None and found.entry.format != DETECTOR_FORMAT:
        raise ModelWeightsError(f"Model '{found.entry.id}' is a {found.entry.task} model, not a 3D detector; "
                                "choose the SMICNet method for it, or a detector model (e.g. detector-phantom).")
    choice = resolve_device(device)
    networks, stages, source = load_detector_weights(found.path, device=choice.name)
    if choice.name.startswith("cuda") and not one_shot:
        torch.backends.cudnn.benchmark = True
    model_id = found.entry.id if found.entry is not None else str(model)
    return Detector3D(model_id, choice.name, networks, stages, time.perf_counter() - start, source,
                      [choice.message] if choice.message else [])


def run_pass(detector: Detector3D, name: str, cubes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid heat ``(N, L, n, n, n)`` and displacement ``(N, L, 3, n, n, n)`` as numpy."""
    torch = require_torch()
    with torch.inference_mode():
        heat, disp = detector.networks[name](cubes)
        return torch.sigmoid(heat).float().cpu().numpy(), disp.float().cpu().numpy()


def heat_image(heat: np.ndarray, cube: np.ndarray) -> Image:
    """A heat channel ``(n, n, n)`` as an :class:`Image` in world space (cell c sits on cube voxel STRIDE * c)."""
    cells = np.diag([OUTPUT_STRIDE, OUTPUT_STRIDE, OUTPUT_STRIDE, 1.0])
    return Image(np.ascontiguousarray(heat, dtype=np.float32), cube @ cells)


def detector_maps(image: Image, seed_ras: np.ndarray, detector: Detector3D, *, progress: Progress,
                  window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Coarse then fine pass around ``seed_ras``; the dict of :func:`smicnet_detector.smicnet_maps`."""
    coarse, fine = detector.stages["coarse"], detector.stages["fine"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if window is None:
        window = intensity_window(image.array, image.ijk_to_ras, seed_ras, coarse.window_radius_mm)
    cube = cube_ijk_to_ras(seed_ras, coarse.size, coarse.spacing_mm)
    x = sample_cubes(image.array, image.ijk_to_ras, [cube], coarse.size, window, device=detector.device)
    timings["sample"] = time.perf_counter() - t0
    progress.update(0.2, "Coarse pass")
    t1 = time.perf_counter()
    heat, disp = run_pass(detector, "coarse", x)
    timings["coarse"] = time.perf_counter() - t1
    found: dict[str, tuple[np.ndarray | None, float]] = {}
    reasons: dict[str, str] = {}
    coarse_points: dict[str, np.ndarray] = {}
    peaks: dict[str, float] = {}
    for ch, name in enumerate(coarse.channels):
        ijk, peak = readout_cells(heat[0, ch], disp[0, ch])
        peaks[name] = peak
        if peak >= PRESENT_THRESHOLD:
            coarse_points[name] = cube_points_to_ras(cube, ijk)[0]
        else:
            reasons[name] = (f"the detector's heat for {name} peaks at {peak:.2f}, below {PRESENT_THRESHOLD:g}, "
                             f"within {coarse.field_of_view_mm / 2:.0f} mm of the seed")
    maps = {name: heat_image(heat[0, ch], cube) for ch, name in enumerate(coarse.channels)}
    progress.update(0.5, "Fine pass")
    t2 = time.perf_counter()
    names = [n for n in LANDMARK_NAMES if n in coarse_points]
    if names:
        cubes = [cube_ijk_to_ras(coarse_points[n], fine.size, fine.spacing_mm) for n in names]
        xf = sample_cubes(image.array, image.ijk_to_ras, cubes, fine.size, window, device=detector.device)
        fheat, fdisp = run_pass(detector, "fine", xf)
        for b, name in enumerate(names):
            ch = fine.channels.index(name)
            ijk, fpeak = readout_cells(fheat[b, ch], fdisp[b, ch])
            point = cube_points_to_ras(cubes[b], ijk)[0]
            if fpeak >= PRESENT_THRESHOLD and np.linalg.norm(point - coarse_points[name]) <= FINE_REACH_MM:
                found[name] = (point, float(min(peaks[name], fpeak)))
            else:
                found[name] = (coarse_points[name], float(min(peaks[name], fpeak)) * 0.5)
    timings["fine"] = time.perf_counter() - t2
    for name in LANDMARK_NAMES:
        found.setdefault(name, (None, float(peaks.get(name, 0.0))))
    if found[ANCHOR][0] is None and any(p is not None for p, _ in found.values()):
        others = [n for n, (p, _) in found.items() if p is not None]
        for name in others:
            reasons[name] = (f"a region scored as {name}, but the {ANCHOR}, the centre of the cochlea, was not found "
                             "near it, so it is not trusted")
            found[name] = (None, 0.0)
    timings["extract"] = 0.0
    progress.update(1.0, "Detector done")
    return {"maps": maps, "found": found, "patches": 0, "timings": timings,
            "box_mm": coarse.field_of_view_mm, "notes": [], "thresholds": PRESENT_THRESHOLD, "reasons": reasons}
