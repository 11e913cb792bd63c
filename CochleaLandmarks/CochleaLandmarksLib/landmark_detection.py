"""One entry point for landmark detection, whatever the method: validate, load, detect, write.

Why: the CLI, the Slicer Logic, the evaluation and the benchmarks must behave identically, so input
checks, the choice of default model, the mapping of probability maps back onto the input's own voxel
lattice and the output files all live here once. Methods plug in below ``detect_landmarks``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from CochleaCommonLib.errors import CochleaError, InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_io import write_image
from CochleaCommonLib.lattice_resample import maps_on_lattice_of
from CochleaCommonLib.markups_io import write_markups
from CochleaCommonLib.model_registry import ModelRegistry
from CochleaCommonLib.progress import Progress, ProgressCallback

from .detector_inference import Detector3D, detector_maps, load_3d_detector
from .landmark_result import LANDMARK_NAMES, LandmarkResult, probability_file_stem
from .smicnet_detector import LoadedDetector, load_smicnet_detector, smicnet_maps

log = logging.getLogger(__name__)

METHODS = ("smicnet", "detector")
MODES = ("fast", "parity")
DEFAULT_MODELS = {"smicnet": "smicnet-phantom", "detector": "detector-phantom"}
#: File name of the per-user registry that ``--register`` writes (in the cache root).
USER_REGISTRY_NAME = "user-models.json"
#: Above this voxel size the network sees too little detail; we warn (the issue's 0.6 mm).
COARSE_SPACING_MM = 0.6
#: Smallest volume edge (voxels) we accept: below it the image is a slice or a thumbnail, not a CT.
MIN_VOXELS_PER_AXIS = 8


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InvalidInputError(f"Unknown {what} '{value}'. Choose one of: {', '.join(choices)}.")
    return value


def load_detector(method: str = "smicnet", model: str | os.PathLike | None = None, *, device: str = "auto",
                  registry: ModelRegistry | None = None, allow_download: bool = False,
                  progress: Progress | ProgressCallback | None = None,
                  one_shot: bool = False) -> LoadedDetector | Detector3D:
    """Load the network(s) of ``method`` (``model``: registry id or weight file; None = the bundled default).

    Keep the returned detector and pass it to :func:`detect_landmarks` to process many volumes without
    reloading. Raises :class:`ModelWeightsError` for missing or corrupt weights and
    :class:`MissingDependencyError` (with install instructions) when PyTorch is missing.

    ``one_shot``: the detector runs once and the process ends (the ``cochlea landmarks`` command). On CUDA it then
    skips what only repeated runs win back: cuDNN's autotuning (it times every algorithm for each new input shape)
    and SMICNet's CUDA graphs (captured per batch shape). On an H100, SMICNet's first detection in a fresh process took
    9.1 s with neither, 11.8 s with autotuning, 12.4 s with graphs and 13.4 s with both (one run each), while the
    graphs take a warm detection from about 175 to 145 ms. No effect on the CPU.
    """
    _check_choice(method, METHODS, "landmark method")
    chosen = str(model) if model is not None else DEFAULT_MODELS[method]
    if registry is None:
        registry = registry_for(chosen)
    if method == "detector":
        return load_3d_detector(chosen, device=device, registry=registry, allow_download=allow_download,
                                progress=Progress.ensure(progress), one_shot=one_shot)
    return load_smicnet_detector(chosen, device=device, registry=registry, allow_download=allow_download,
                                 progress=Progress.ensure(progress), one_shot=one_shot)


def registry_for(model: str) -> ModelRegistry:
    """The extension's registry, or the per-user registry of models trained here (``cochlea train ...
    --register``) when only that one knows the id, so a model trained on this computer is used by id."""
    bundled = ModelRegistry.load()
    if model in bundled or Path(model).suffix:
        return bundled
    from CochleaCommonLib.model_registry import default_cache_root

    user_path = default_cache_root() / USER_REGISTRY_NAME
    if user_path.is_file():
        user = ModelRegistry.load(user_path)
        if model in user:
            return user
    return bundled


def _few_distinct_values(sample: np.ndarray, limit: int) -> bool:
    """Whether ``sample`` holds at most ``limit`` distinct values. A CT answers no from its first few thousand
    voxels, so the full sort (milliseconds, a sizeable share of a GPU detection) is only paid by label maps."""
    flat = sample.reshape(-1)
    if len(np.unique(flat[:4096])) > limit:
        return False
    return len(np.unique(flat)) <= limit


def validate_image(image: Image) -> list[str]:
    """Refuse what cannot be a CT/CBCT of the temporal bone; return warnings for what degrades accuracy."""
    shape = image.array.shape
    if image.array.ndim != 3 or min(shape) < MIN_VOXELS_PER_AXIS:
        raise InvalidInputError(
            f"The volume is {'x'.join(str(s) for s in shape[::-1])} voxels: landmark detection needs a 3D CT or "
            f"cone-beam CT with at least {MIN_VOXELS_PER_AXIS} voxels along every axis, not a single slice.")
    if image.array.dtype == bool:
        raise InvalidInputError("The volume is a binary mask, not a CT: select the CT or cone-beam CT image.")
    sample = image.array[:: max(1, shape[0] // 32), :: max(1, shape[1] // 64), :: max(1, shape[2] // 64)]
    if not np.all(np.isfinite(sample)):
        raise InvalidInputError("The volume contains NaN or infinite intensities; it is not a usable CT.")
    lo, hi = float(np.min(sample)), float(np.max(sample))
    if hi <= lo:
        raise InvalidInputError("The volume has a single intensity everywhere; it is not a CT.")
    if np.issubdtype(image.array.dtype, np.integer) and _few_distinct_values(sample, 16):
        raise InvalidInputError(
            "The volume holds only a few distinct values: it looks like a label map or segmentation, not a CT. "
            "Select the CT or cone-beam CT image.")
    warnings = []
    spacing = image.spacing
    if np.max(spacing) > COARSE_SPACING_MM + 1e-6:
        warnings.append(
            f"The voxel size is {', '.join(f'{s:.2f}' for s in spacing)} mm, coarser than {COARSE_SPACING_MM} mm: "
            "the models were made for about 0.3 mm, so expect larger landmark errors.")
    return warnings


def validate_seed(image: Image, seed_ras: Any) -> np.ndarray:
    """The seed as a (3,) RAS array; :class:`InvalidInputError` when it is not a point inside the volume."""
    try:
        seed = np.asarray(seed_ras, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"The seed must be one point R, A, S in mm, got {seed_ras!r}.") from exc
    if not np.all(np.isfinite(seed)):
        raise InvalidInputError("The seed point has a non-finite coordinate; place it again.")
    index = image.ras_to_continuous_index(seed)
    n = np.array(image.shape_ijk, dtype=np.float64)
    if np.any(index < -0.5) or np.any(index > n - 0.5):
        lo, hi = image.world_bounds()
        raise InvalidInputError(
            f"The seed point (R {seed[0]:.1f}, A {seed[1]:.1f}, S {seed[2]:.1f} mm) lies outside the volume, which "
            f"spans R {lo[0]:.1f}..{hi[0]:.1f}, A {lo[1]:.1f}..{hi[1]:.1f}, S {lo[2]:.1f}..{hi[2]:.1f} mm. "
            "Place the seed on the cochlea inside this volume.")
    return seed


def detect_landmarks(image: Image, seed_ras: Any, *, method: str = "smicnet",
                     model: str | os.PathLike | None = None, detector: LoadedDetector | Detector3D | None = None,
                     mode: str = "fast", device: str = "auto", roi_mm: float | None = None,
                     registry: ModelRegistry | None = None, allow_download: bool = False,
                     output_maps: bool = True,
                     progress: Progress | ProgressCallback | None = None) -> LandmarkResult:
    """Find Helicotrema, Modiolus base and Round Window around ``seed_ras`` (RAS mm) in ``image``.

    Args:
        image: CT or cone-beam CT, any orientation and spacing.
        seed_ras: a rough click on the cochlea, up to about 5 mm from it.
        method: one of ``METHODS``: ``smicnet`` (2D patch classifier swept over the region) or ``detector``
            (3D heatmap and displacement network, coarse then fine pass).
        model / detector: a registry id or weight file, or an already loaded detector (for loops; its
            method wins over ``method``).
        mode: SMICNet only: ``fast`` (coarse-to-fine, corrected centring, eight views averaged where promising) or
            ``parity`` (the authors' exact procedure). The 3D detector has one mode, ``fast``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (ignored when ``detector`` is given).
        roi_mm: edge of the search box in fast mode (default ``FAST_BOX_MM``; its inscribed ball is searched);
            parity mode is fixed.
        output_maps: resample the probability maps onto the input's lattice (skip for pure accuracy runs).
        progress: callback ``(fraction, message)`` or a :class:`Progress`; cancellation raises
            :class:`OperationCancelled`.

    Returns a :class:`LandmarkResult`. A landmark without a confident island is reported missing with
    its reason. Raises :class:`InvalidInputError` when no landmark at all is found ("no cochlea found
    within N mm of the seed") and for invalid inputs, before any heavy work.
    """
    t_start = time.perf_counter()
    if detector is not None:
        method = detector.method
    _check_choice(method, METHODS, "landmark method")
    _check_choice(mode, MODES, "mode")
    if method == "detector" and mode != "fast":
        raise InvalidInputError("The 3D detector has no parity mode (that reproduces SMICNet's published sweep); "
                                "use mode 'fast' or the SMICNet method.")
    if roi_mm is not None and not (5.0 <= float(roi_mm) <= 60.0):
        raise InvalidInputError(f"The search region size must be 5 to 60 mm, not {roi_mm} mm.")
    warnings = validate_image(image)
    seed = validate_seed(image, seed_ras)
    prog = Progress.ensure(progress)
    if detector is None:
        prog.update(0.0, "Loading the model")
        detector = load_detector(method, model, device=device, registry=registry, allow_download=allow_download)
        load_seconds = detector.load_seconds
    else:
        load_seconds = 0.0
    warnings += detector.messages
    prog.check()
    if method == "detector":
        if roi_mm is not None:
            warnings.append(f"The 3D detector searches its own fixed cube; the search region of {roi_mm} mm applies "
                            "to SMICNet only and was ignored.")
        out = detector_maps(image, seed, detector, progress=prog.sub(0.0, 0.9))
    else:
        out = smicnet_maps(image, seed, detector, mode=mode, box_mm=roi_mm, progress=prog.sub(0.0, 0.9))
    warnings += out["notes"]
    positions: dict[str, np.ndarray | None] = {}
    confidences: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in LANDMARK_NAMES:
        position, confidence = out["found"][name]
        positions[name] = position
        confidences[name] = confidence
        if position is None:
            thr = out["thresholds"][name] if isinstance(out["thresholds"], dict) else out["thresholds"]
            missing[name] = out.get("reasons", {}).get(name) or (
                f"no region scored above {thr:g} for {name} within {out['box_mm'] / 2:.1f} mm of the seed")
    if all(p is None for p in positions.values()):
        why = missing.get("Modiolus base", "no landmark scored above threshold")
        raise InvalidInputError(
            f"No cochlea found within {out['box_mm'] / 2:.1f} mm of the seed (R {seed[0]:.1f}, A {seed[1]:.1f}, "
            f"S {seed[2]:.1f}): {why}. Place the seed on the cochlea and run again.")
    timings = {"load_model": load_seconds, **out["timings"]}
    maps: dict[str, Image] = {}
    if output_maps:
        prog.update(0.92, "Mapping probabilities onto the volume")
        t = time.perf_counter()
        maps = maps_on_lattice_of(image, out["maps"], device=detector.device)
        timings["resample_maps"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    prog.update(1.0, "Landmarks found")
    return LandmarkResult(method=method, mode=mode, model_id=detector.model_id, device=detector.device,
                          seed_ras=seed, positions_ras=positions, confidences=confidences, probability_maps=maps,
                          timings=timings, patches=int(out["patches"]), warnings=warnings,
                          missing_reasons=missing, search_box_mm=float(out["box_mm"]))


def detect_cochleae(image: Image, *, model: str | os.PathLike | None = None, detector: Detector3D | None = None,
                    device: str = "auto", registry: ModelRegistry | None = None, allow_download: bool = False,
                    output_maps: bool = True,
                    progress: Progress | ProgressCallback | None = None) -> list[LandmarkResult]:
    """Seed-free mode of the 3D detector: every cochlea in ``image`` (one result per ear, named by side).

    A head CT is searched by the detector's global pass, a temporal-bone CT (every edge <= 64 mm) by
    tiling the coarse pass (see :mod:`detector_seedfree`); each candidate runs the seeded detection, and
    what confirms a Modiolus base is an ear. Results are ordered right ear first; ``side`` is ``right``,
    ``left`` or None (one ear whose three landmarks were not all found). Raises :class:`InvalidInputError`
    "No cochlea found in the volume" when there is none, rather than guessing.
    """
    from .detector_seedfree import find_candidates, side_of_ear

    t_start = time.perf_counter()
    warnings = validate_image(image)
    prog = Progress.ensure(progress)
    load_seconds = 0.0
    if detector is None:
        prog.update(0.0, "Loading the model")
        detector = load_detector("detector", model, device=device, registry=registry, allow_download=allow_download)
        load_seconds = detector.load_seconds
    if detector.method != "detector":
        raise InvalidInputError("Seed-free detection needs the 3D detector (method 'detector'); SMICNet needs a seed.")
    candidates, info = find_candidates(image, detector, prog.sub(0.0, 0.3))
    results: list[LandmarkResult] = []
    for n, (point, _score) in enumerate(candidates):
        prog.check()
        try:
            inside = validate_seed(image, point)
        except InvalidInputError:
            continue
        try:
            result = detect_landmarks(image, inside, detector=detector, output_maps=output_maps,
                                      progress=prog.sub(0.3 + 0.7 * n / len(candidates),
                                                        0.3 + 0.7 * (n + 1) / len(candidates)))
        except InvalidInputError:
            continue  # the local passes found no cochlea there: a look-alike, not an ear
        base = result.positions_ras["Modiolus base"]
        if base is None or any(np.linalg.norm(base - r.positions_ras["Modiolus base"]) < 15.0 for r in results):
            continue
        result.seed_free = True
        result.timings["find_candidates"] = info["seconds"] if not results else 0.0
        result.warnings = warnings + [w for w in result.warnings if w not in warnings]
        results.append(result)
        if len(results) == 2:
            break
    if not results:
        raise InvalidInputError(
            f"No cochlea found in the volume ({info['how']}, {len(candidates)} candidate region(s) checked, none "
            "confirmed by the local passes). If the volume shows a cochlea, place a seed on it and run the seeded "
            "detection.")
    if len(results) == 2:
        results.sort(key=lambda r: -float(r.positions_ras["Modiolus base"][0]))
        results[0].side, results[1].side = "right", "left"
    else:
        results[0].side = side_of_ear(results[0].positions_ras)
    total = time.perf_counter() - t_start
    for r in results:
        r.timings["load_model"] = load_seconds
        r.timings["seed_free_total"] = total
    prog.update(1.0, f"{len(results)} cochlea(e) found")
    return results


def ear_name(result: LandmarkResult, base: str = "Landmarks") -> str:
    """``Landmarks right`` / ``Landmarks left`` for a seed-free result, ``base`` for a seeded one."""
    return f"{base} {result.side}" if result.side else (f"{base} (side unknown)" if result.seed_free else base)


def write_landmark_outputs(result: LandmarkResult, out_dir: str | os.PathLike, *,
                           name: str = "Landmarks") -> dict[str, Path]:
    """Write ``landmarks.fcsv`` (LPS), ``landmarks.mrk.json``, ``probability_<name>.nrrd`` and ``report.json``.

    All files are first written into a temporary folder inside ``out_dir`` and moved into place only
    when every one of them is complete, so a failure never leaves a half-written or mixed set of
    results. Returns the paths by kind.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".landmarks-", dir=out))
    except OSError as exc:
        raise CochleaError(f"Cannot write into the output folder {out}: {exc.strerror or exc}.") from exc
    try:
        points = result.points(name)
        staged: dict[str, Path] = {"fcsv": staging / "landmarks.fcsv", "mrk.json": staging / "landmarks.mrk.json"}
        write_markups(points, staged["fcsv"], coordinate_system="LPS")
        write_markups(points, staged["mrk.json"], coordinate_system="LPS")
        for landmark, image in result.probability_maps.items():
            staged[probability_file_stem(landmark)] = staging / f"{probability_file_stem(landmark)}.nrrd"
            write_image(image, staged[probability_file_stem(landmark)])
        report = result.report()
        report["files"] = {k: p.name for k, p in staged.items()}
        staged["report"] = staging / "report.json"
        staged["report"].write_text(json.dumps(report, indent=2) + "\n")
        # Everything is written: only now replace the previous results (same file system, atomic renames).
        paths = {}
        for kind, path in staged.items():
            paths[kind] = out / path.name
            os.replace(path, paths[kind])
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)
