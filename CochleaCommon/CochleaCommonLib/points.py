"""A labelled list of 3D points in world RAS: the one in-memory form of every landmark set.

Why a small class instead of a bare array: landmark work goes wrong when points are matched by
row order (the right-ear reference file uses generic labels, a colleague's file may list the
round window first). Carrying the labels with the positions lets code ask for ``"Modiolus base"``
by name and fail loudly, listing what *is* there, when it is absent.

Positions are RAS millimetres, as in Slicer. File formats (LPS on disk) are handled by
:mod:`.markups_io`; MRML nodes by ``slicer_io``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError


@dataclass
class PointList:
    """Points ``positions_ras`` (N, 3) with one label each, an optional name and descriptions.

    The constructor validates and normalises: positions become a float64 (N, 3) array of finite
    values, labels and descriptions lists of ``str`` of length N (``descriptions=None`` means
    all empty).
    """

    positions_ras: np.ndarray
    labels: list[str]
    name: str = ""
    descriptions: list[str] | None = None

    def __post_init__(self) -> None:
        try:
            pos = np.array(self.positions_ras, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Point list '{self.name}': positions are not numbers ({exc}).") from exc
        if pos.size == 0:
            pos = pos.reshape(0, 3)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise InvalidInputError(
                f"Point list '{self.name}': positions must be an (N, 3) array of x, y, z, got shape {pos.shape}."
            )
        if not np.all(np.isfinite(pos)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(pos), axis=1))[0])
            raise InvalidInputError(
                f"Point list '{self.name}': point {bad + 1} has a non-finite coordinate (NaN or infinity). "
                "Every point needs a placed position."
            )
        if isinstance(self.labels, str):
            raise InvalidInputError(f"Point list '{self.name}': labels must be a list of strings, not one string.")
        labels = [str(label) for label in self.labels]
        if len(labels) != len(pos):
            raise InvalidInputError(
                f"Point list '{self.name}': {len(pos)} positions but {len(labels)} labels; give one label per point."
            )
        if self.descriptions is None:
            descriptions = [""] * len(pos)
        else:
            descriptions = ["" if d is None else str(d) for d in self.descriptions]
            if len(descriptions) != len(pos):
                raise InvalidInputError(
                    f"Point list '{self.name}': {len(pos)} positions but {len(descriptions)} descriptions."
                )
        self.positions_ras = pos
        self.labels = labels
        self.descriptions = descriptions
        self.name = "" if self.name is None else str(self.name)

    def __len__(self) -> int:
        return len(self.labels)

    def index_of(self, label: str) -> int:
        """Row of the point labelled ``label``; a missing or ambiguous label is an error, never a guess."""
        hits = [i for i, existing in enumerate(self.labels) if existing == label]
        if len(hits) == 1:
            return hits[0]
        listing = ", ".join(repr(x) for x in self.labels) or "none"
        where = f"'{self.name}'" if self.name else "the point list"
        if not hits:
            raise InvalidInputError(f"No point labelled {label!r} in {where}. Available labels: {listing}.")
        raise InvalidInputError(
            f"{len(hits)} points are labelled {label!r} in {where} (rows {', '.join(str(h + 1) for h in hits)}); "
            "rename them so each label is unique."
        )

    def position(self, label: str) -> np.ndarray:
        """RAS position (3,) of the point labelled ``label`` (a copy)."""
        return self.positions_ras[self.index_of(label)].copy()

    def subset(self, labels: Iterable[str]) -> PointList:
        """A new list with just ``labels``, in the order given (so callers fix the order they rely on)."""
        wanted = list(labels)
        rows = [self.index_of(label) for label in wanted]
        assert self.descriptions is not None  # normalised in __post_init__
        return PointList(
            positions_ras=self.positions_ras[rows] if rows else np.zeros((0, 3)),
            labels=[self.labels[r] for r in rows],
            name=self.name,
            descriptions=[self.descriptions[r] for r in rows],
        )
