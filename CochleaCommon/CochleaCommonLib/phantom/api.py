"""Python entry points: one case in memory, an endless stream for training, a reproducible suite on disk.

Why in memory first: training loops and tests want arrays, not files; :func:`generate_case`
returns a :class:`PhantomCase` holding the image, label map, landmarks, seed click, contacts and
``case.json`` record, and :meth:`PhantomCase.write` saves it as a Slicer user would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_output
from ..errors import InvalidInputError
from ..image import Image
from ..points import PointList
from ..progress import Progress, ProgressCallback
from . import render
from .anatomy import Scene
from .groundtruth import GENERATOR_VERSION, case_record, landmark_points, seed_point
from .params import KINDS, PhantomParams, draw_params


@dataclass
class PhantomCase:
    """One synthetic case: image (RAS geometry), labels on the same grid, and the ground truth."""

    case_id: str
    params: PhantomParams
    image: Image
    labels: Image
    landmarks: PointList
    seed_point: PointList
    contacts: PointList | None
    info: dict[str, Any]
    cochlear_to_world: np.ndarray
    scene: Scene = field(repr=False)
    _meshes: list | None = field(default=None, repr=False)

    def meshes(self) -> list:
        """Surface meshes of scala tympani, scala vestibuli, modiolus (with vertex correspondence) and labyrinth."""
        if self._meshes is None:
            from .meshes import case_meshes

            self._meshes = case_meshes(self.scene)
        return self._meshes

    def write(self, out_dir: str | os.PathLike, *, preview: bool = False, meshes: bool = False) -> Path:
        """Write the case folder (see :mod:`.writer`) and return its path."""
        from .writer import write_case

        return write_case(self, out_dir, preview=preview, meshes=meshes)

    def write_preview(self, path: str | os.PathLike) -> Path:
        """Three sections through the modiolus with labels, landmarks and contacts drawn."""
        from .preview import render_preview

        lm = {n: self.landmarks.position(n) for n in self.landmarks.labels}
        window = (-600.0, 2600.0) if self.params.kind != "cbct" else None
        contacts = self.contacts.positions_ras if self.contacts is not None else None
        m = self.info["cochlea"]
        title = (f"{self.case_id}: synthetic {self.params.kind.upper()}, {self.params.side} ear, "
                 f"A = {m['a_value_mm']:.2f} mm, {m['turns']:.2f} turns, spacing "
                 f"{'x'.join(f'{s:.2f}' for s in self.image.spacing)} mm")
        return render_preview(self.image, self.labels, self.cochlear_to_world, path, landmarks=lm, contacts=contacts,
                              title=title, window=window)


def case_id_for(kind: str, seed: int) -> str:
    """Stable folder / node name of a case."""
    return f"phantom_{kind}_{int(seed):05d}"


def generate_case(kind: str = "ct", seed: int = 0, spacing: float | Iterable[float] | None = None,
                  fov_mm: float | Iterable[float] | None = None, side: str | None = None,
                  progress: Progress | ProgressCallback | None = None, **overrides: Any) -> PhantomCase:
    """Generate one phantom case in memory.

    ``kind`` is ``"ct"`` (HU-calibrated), ``"cbct"`` (uncalibrated grey values) or ``"postop"``
    (CT with a cochlear-implant electrode and metal artefacts). Every other parameter is drawn
    from the published ranges by ``seed``; ``spacing`` (mm, one value or i, j, k), ``fov_mm``,
    ``side`` and any :class:`PhantomParams` field passed as a keyword fix them. The same
    arguments always give the same case, bit for bit.
    """
    prog = Progress.ensure(progress)
    params = draw_params(kind, seed, spacing_mm=spacing, fov_mm=fov_mm, side=side, **overrides)
    prog.update(0.02, "Building the anatomy")
    scene = Scene(params)
    shape, ijk_to_ras = render.grid_geometry(params, scene)
    prog.update(0.05, "Rasterising the anatomy")
    raster = prog.sub(0.05, 0.6 if kind == "postop" else 0.85)
    hu, label = render.rasterise(scene, shape, ijk_to_ras, check=raster.check)
    contacts: PointList | None = None
    electrode_info = None
    if kind == "postop":
        from .electrode import Electrode
        from .metal import add_metal

        prog.update(0.6, "Inserting the electrode array")
        electrode = Electrode(params, scene)
        metal, silicone = electrode.fractions(shape, ijk_to_ras)
        prog.update(0.65, "Simulating metal artefacts")
        hu = add_metal(hu, metal, silicone, params, ijk_to_ras, check=prog.sub(0.65, 0.9).check)
        contacts = electrode.contact_points()
        electrode_info = electrode.record()
    prog.update(0.9, "Blur and noise")
    image = render.finish(hu, params, ijk_to_ras)
    labels = Image(label, ijk_to_ras.copy())
    landmarks = landmark_points(scene)
    seed_pt = seed_point(params, landmarks)
    cid = case_id_for(kind, params.seed)
    info = case_record(cid, params, scene, image, landmarks, seed_pt, electrode_info)
    prog.update(1.0, "Done")
    return PhantomCase(case_id=cid, params=params, image=image, labels=labels, landmarks=landmarks,
                       seed_point=seed_pt, contacts=contacts, info=info,
                       cochlear_to_world=scene.cochlear_to_world(), scene=scene)


def iter_cases(kinds: str | Iterable[str] = "ct", start_seed: int = 0, count: int | None = None,
               **kwargs: Any) -> Iterator[PhantomCase]:
    """Yield cases with seeds ``start_seed, start_seed + 1, ...`` cycling through ``kinds``.

    ``count=None`` yields forever (for training loops); other keywords go to :func:`generate_case`.
    """
    kind_list = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kind_list or any(k not in KINDS for k in kind_list):
        raise InvalidInputError(f"kinds must be chosen from {', '.join(KINDS)}, got {kind_list!r}.")
    i = 0
    while count is None or i < count:
        yield generate_case(kind_list[i % len(kind_list)], start_seed + i, **kwargs)
        i += 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_suite(count: int, out_dir: str | os.PathLike, seed: int = 0,
                kinds: Iterable[str] = ("ct", "cbct", "postop"), *, preview: bool = False, meshes: bool = False,
                progress: Progress | ProgressCallback | None = None, **kwargs: Any) -> Path:
    """Write ``count`` cases and a ``manifest.json`` into ``out_dir``; the same arguments give the same files.

    Case ``i`` uses kind ``kinds[i % len(kinds)]`` and seed ``seed * 10000 + i``. The manifest lists each
    case's folder, kind, seed, key measures and the SHA-256 of its volume and label files.
    """
    if int(count) < 1:
        raise InvalidInputError(f"count must be at least 1, got {count}.")
    kind_list = list(kinds)
    if not kind_list or any(k not in KINDS for k in kind_list):
        raise InvalidInputError(f"kinds must be chosen from {', '.join(KINDS)}, got {kind_list!r}.")
    prog = Progress.ensure(progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(int(count)):
        kind = kind_list[i % len(kind_list)]
        case_seed = int(seed) * 10000 + i
        prog.update(i / count, f"Case {i + 1} of {count} ({kind}, seed {case_seed})")
        case = generate_case(kind, case_seed, **kwargs)
        folder = case.write(out, preview=preview, meshes=meshes)
        files = json.loads((folder / "case.json").read_text())["files"]
        entries.append({
            "case_id": case.case_id, "folder": folder.name, "kind": kind, "seed": case_seed,
            "side": case.params.side, "spacing_mm": [float(f"{s:.6g}") for s in case.image.spacing],
            "a_value_mm": case.info["cochlea"]["a_value_mm"], "turns": case.info["cochlea"]["turns"],
            "files": files,
            "sha256": {key: _sha256(folder / files[key]) for key in ("volume", "labels")},
        })
    manifest = {"generator": {"name": "CochleaToolkit phantom", "version": GENERATOR_VERSION},
                "synthetic": True, "count": int(count), "seed": int(seed), "kinds": kind_list, "cases": entries}
    with atomic_output(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    prog.update(1.0, "Suite written")
    return out / "manifest.json"
