"""The result of one landmark detection: points, confidences, probability maps, timings and a report.

Why one class for every method: the CLI, the Slicer Logic, the evaluation and the benchmarks all
consume the same thing whether SMICNet or another detector produced it, so they never need to know
which method ran. Landmarks that were not found stay in the result as ``None`` with a reason; they
are never replaced by a guessed point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from CochleaCommonLib.geometry import ras_to_lps
from CochleaCommonLib.image import Image
from CochleaCommonLib.points import PointList

#: The three landmarks, in the order of DESIGN.md (and of every point list we write).
LANDMARK_NAMES = ("Helicotrema", "Modiolus base", "Round Window")


def probability_file_stem(name: str) -> str:
    """``probability_Modiolus_base`` for ``Modiolus base``: the file name (without suffix) of a landmark's map."""
    return "probability_" + name.replace(" ", "_")


@dataclass
class LandmarkResult:
    """What a detector found around one seed.

    Attributes:
        method: detector name (``smicnet`` or ``detector``).
        mode: ``fast`` or ``parity`` (SMICNet); ``fast`` for the 3D detector.
        model_id: registry id of the weights, or the weight file's name when a file was given.
        device: torch device the network ran on (``cpu``, ``cuda`` ...).
        seed_ras: the seed point (RAS mm).
        positions_ras: every name of ``LANDMARK_NAMES`` -> (3,) RAS position, or None when not found.
        confidences: every landmark -> 0..1 (0 when not found).
        probability_maps: landmark -> float32 probability :class:`Image` on the input volume's own
            lattice (same spacing and directions, cropped to the searched region).
        timings: seconds per stage (``load_model``, ``preprocess``, ``sweep``, ``extract``, ``total`` ...).
        patches: number of 81x81 patches the classifier scored (0 for the 3D detector).
        warnings: sentences for the user (coarse spacing, device fallback, ...).
        missing_reasons: landmark -> why it has no point.
        side: ``left`` or ``right`` when the seed-free mode named the ear (None for a seeded run).
        seed_free: True when the seed was found by the detector's global pass, not clicked.
    """

    method: str
    mode: str
    model_id: str
    device: str
    seed_ras: np.ndarray
    positions_ras: dict[str, np.ndarray | None]
    confidences: dict[str, float]
    probability_maps: dict[str, Image] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    patches: int = 0
    warnings: list[str] = field(default_factory=list)
    missing_reasons: dict[str, str] = field(default_factory=dict)
    search_box_mm: float = 0.0
    side: str | None = None
    seed_free: bool = False

    @property
    def found_names(self) -> list[str]:
        """The landmarks that have a point, in ``LANDMARK_NAMES`` order."""
        return [n for n in LANDMARK_NAMES if self.positions_ras.get(n) is not None]

    def points(self, name: str = "Landmarks") -> PointList:
        """The found landmarks as a labelled RAS point list (missing ones are left out, never guessed)."""
        names = self.found_names
        positions = np.array([self.positions_ras[n] for n in names], dtype=np.float64).reshape(-1, 3)
        descriptions = [f"{self.method} confidence {self.confidences.get(n, 0.0):.3f}" for n in names]
        return PointList(positions, names, name=name, descriptions=descriptions)

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary: positions (RAS and LPS), confidences, timings, model, device, warnings."""
        landmarks = []
        for n in LANDMARK_NAMES:
            p = self.positions_ras.get(n)
            entry: dict[str, Any] = {"label": n, "found": p is not None,
                                     "confidence": round(float(self.confidences.get(n, 0.0)), 6)}
            if p is not None:
                entry["position_ras"] = [round(float(v), 4) for v in p]
                entry["position_lps"] = [round(float(v), 4) for v in ras_to_lps(np.asarray(p))]
            else:
                entry["reason"] = self.missing_reasons.get(n, "not found")
            landmarks.append(entry)
        return {
            "method": self.method,
            "mode": self.mode,
            "model": self.model_id,
            "device": self.device,
            "seed_ras": [round(float(v), 4) for v in self.seed_ras],
            "seed_free": bool(self.seed_free),
            "side": self.side,
            "search_box_mm": round(float(self.search_box_mm), 3),
            "landmarks": landmarks,
            "patches_scored": int(self.patches),
            "timings_s": {k: round(float(v), 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }
