"""Turn probability maps into landmarks: islands per class, then the anatomically consistent choice.

Why not just "the largest island" (the authors' rule): a patch classifier scores every voxel of a
box of ~350,000 voxels, so even a 0.1 % false-positive rate leaves small islands of confident
voxels far from the cochlea, and the largest one is sometimes one of them. The three landmarks of
one cochlea are never far apart (apex to basal point 2.5-5.5 mm, basal point to round window
4-6.5 mm, apex to round window 6-8 mm on CT; the limits below add a generous margin), so we pick,
among the strongest islands of each class, the combination with the most evidence (summed log-odds,
see :class:`Island`) whose pairwise distances are anatomically possible and, when all three are
chosen, whose apex and round window are roughly perpendicular as seen from the basal point (the
definition of that point). A landmark none of whose islands fits is reported missing, never moved to
a guessed place.

The confidence of a landmark is the chosen island's peak probability times the share of the class's
supra-threshold evidence that lies in it: one clean island gives about its peak; competing
islands lower it, which is what a clinician needs to know before trusting the point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.image import Image

from .connected_components import label_components

#: Largest plausible distance (mm) between two landmarks of one cochlea, per pair (order-free).
MAX_PAIR_DISTANCE_MM = {
    frozenset(("Helicotrema", "Modiolus base")): 7.5,
    frozenset(("Modiolus base", "Round Window")): 8.5,
    frozenset(("Helicotrema", "Round Window")): 11.0,
}
#: The modiolus base is the foot of the perpendicular from the round window onto the modiolar axis, and the
#: helicotrema ends the spiral at the top of that axis, so seen from the base the apex and the round window lie
#: about 90 degrees apart (76-104 degrees over 78 phantoms). A triple is accepted within 60-120 degrees: twice
#: that spread, for the points' own errors. Without it a look-alike apex island in the middle turn, stronger
#: than the true one, won on a phantom (127 degrees, 3.9 mm off); the true island sat at 91 degrees.
MAX_APEX_WINDOW_ABS_COS = 0.5
#: Landmarks chosen after the others (see select_consistent).
SECONDARY = frozenset({"Helicotrema"})
#: Islands considered per landmark (strongest evidence first) and the least evidence an island needs
#: (about two voxels at p = 0.9, or one at p = 0.99).
TOP_ISLANDS = 5
MIN_ISLAND_EVIDENCE = 4.0


@dataclass(frozen=True)
class Island:
    """One connected region above threshold: weighted centre (RAS), evidence, mass (sum of p), peak p, voxels.

    ``evidence`` is the sum of the voxels' log-odds ``log(p / (1 - p))``: a voxel at p = 0.9999 counts
    about four times one at 0.9. Ranking islands by it rather than by size prefers the region where the
    classifier is really sure (the authors used a 0.9999 threshold for the apex for the same reason)
    while the centre is still taken over the whole island.
    """

    centre_ras: np.ndarray
    evidence: float
    mass: float
    peak: float
    voxels: int
    #: The island's voxels ``(voxels, 3)``, array (KJI) indices of the map it came from.
    members_kji: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64), repr=False,
                                    compare=False)


def find_islands(prob: Image, threshold: float, *, connectivity: int = 26) -> list[Island]:
    """Every island of ``prob > threshold``, strongest (most evidence) first (equal evidence: in ITK's label order).

    The islands are labelled with :func:`label_components` (numpy), which numbers them exactly as SimpleITK's
    ``ConnectedComponentImageFilter`` did, without the cost of importing SimpleITK.
    """
    if connectivity not in (6, 26):
        raise InvalidInputError(f"connectivity must be 6 or 26, got {connectivity}.")
    full = np.asarray(prob.array)
    hot = np.nonzero(full > threshold)
    if len(hot[0]) == 0:
        return []
    # Label only the bounding box of the voxels above threshold (a few hundred voxels of a 350,000-voxel
    # map): the same islands, at a fraction of the cost of labelling the whole map.
    lo = np.array([axis.min() for axis in hot])
    hi = np.array([axis.max() for axis in hot]) + 1
    p = np.asarray(full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float64)
    mask = p > threshold
    labels = label_components(mask, connectivity=connectivity)
    flat_labels = labels[mask]
    kji = np.array(np.nonzero(mask), dtype=np.float64) + lo[:, None]  # (3, M), same order as flat_labels
    weights = p[mask]
    count = int(flat_labels.max())
    mass = np.bincount(flat_labels, weights=weights, minlength=count + 1)
    clipped = np.clip(weights, 1e-6, 1.0 - 1e-6)
    evidence = np.bincount(flat_labels, weights=np.log(clipped / (1.0 - clipped)), minlength=count + 1)
    voxels = np.bincount(flat_labels, minlength=count + 1)
    peak = np.zeros(count + 1)
    np.maximum.at(peak, flat_labels, weights)
    centre = np.stack([np.bincount(flat_labels, weights=weights * kji[a], minlength=count + 1) for a in range(3)],
                      axis=1)
    members = kji.T.astype(np.int64)
    order = np.argsort(flat_labels, kind="stable")
    bounds = np.searchsorted(flat_labels[order], np.arange(1, count + 2))
    islands = []
    for label in range(1, count + 1):
        centre_kji = centre[label] / mass[label]
        ras = np.asarray(prob.index_to_ras(centre_kji[::-1]), dtype=np.float64).reshape(3)
        islands.append(Island(ras, float(evidence[label]), float(mass[label]), float(peak[label]),
                              int(voxels[label]), members[order[bounds[label - 1]:bounds[label]]]))
    return sorted(islands, key=lambda isl: -isl.evidence)


def _pair_ok(a: str, pa: Island, b: str, pb: Island) -> bool:
    limit = MAX_PAIR_DISTANCE_MM.get(frozenset((a, b)))
    return limit is None or float(np.linalg.norm(pa.centre_ras - pb.centre_ras)) <= limit


def _angle_ok(chosen: dict[str, Island]) -> bool:
    """Apex and round window about perpendicular as seen from the modiolus base (when all three are chosen)."""
    if not {"Helicotrema", "Modiolus base", "Round Window"} <= chosen.keys():
        return True
    base = chosen["Modiolus base"].centre_ras
    to_apex = chosen["Helicotrema"].centre_ras - base
    to_window = chosen["Round Window"].centre_ras - base
    norms = float(np.linalg.norm(to_apex) * np.linalg.norm(to_window))
    return norms > 0 and abs(float(to_apex @ to_window)) / norms <= MAX_APEX_WINDOW_ABS_COS


def select_consistent(candidates: dict[str, list[Island]], *, top: int = TOP_ISLANDS,
                      min_evidence: float = MIN_ISLAND_EVIDENCE) -> dict[str, tuple[Island | None, float]]:
    """Choose one island (or none) per landmark: the most total evidence among anatomically possible combinations,
    first for the landmarks not in ``SECONDARY``, then for those in it, given the first.

    Why two tiers: the apex is the least reliable landmark (smallest, at the end of the spiral, with look-alikes
    in the middle turn). Scored jointly, a strong look-alike apex could drag a wrong round window in with it
    to satisfy the angle; ranked second, a wrong apex can only be replaced or left out.

    Returns ``{name: (island or None, confidence)}``.
    """
    names = list(candidates)
    options = {n: [isl for isl in candidates[n] if isl.evidence >= min_evidence][:top] for n in names}
    best: tuple = (-1.0, -1, -1.0, -1, ())
    for combo in itertools.product(*[[None, *options[n]] for n in names]):
        chosen = [(n, isl) for n, isl in zip(names, combo) if isl is not None]
        if any(not _pair_ok(a, pa, b, pb) for (a, pa), (b, pb) in itertools.combinations(chosen, 2)):
            continue
        if not _angle_ok(dict(chosen)):
            continue
        first = [isl for n, isl in chosen if n not in SECONDARY]
        second = [isl for n, isl in chosen if n in SECONDARY]
        score = (sum(isl.evidence for isl in first), len(first), sum(isl.evidence for isl in second), len(second),
                 combo)
        if score[:4] > best[:4]:
            best = score
    result: dict[str, tuple[Island | None, float]] = {}
    for n, isl in zip(names, best[4] or [None] * len(names)):
        if isl is None:
            result[n] = (None, 0.0)
            continue
        total = sum(max(i.evidence, 0.0) for i in candidates[n])
        result[n] = (isl, float(isl.peak * isl.evidence / total) if total > 0 else 0.0)
    return result
