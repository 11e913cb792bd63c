"""Write a phantom case folder the way a Slicer user would have saved it.

Why these names and formats: a user (or a test) should be able to drag the folder into Slicer and
get a volume, a label map (``-label`` suffix, which Slicer loads as a label map), markups in LPS
and models, all in the right place; and our own readers must load the same files back.

Folder ``<out>/<case_id>/``::

    <case_id>.nrrd                 volume (CT: HU int16; CBCT: grey values), LPS space
    <case_id>-label.nrrd           labels on the image grid: 1 ST, 2 SV, 3 modiolus, 4 rest of labyrinth
    <case_id>_landmarks.fcsv       Helicotrema, Modiolus base, Round Window (LPS)
    <case_id>_seed.fcsv            the rough click (LPS)
    <case_id>_contacts.fcsv        post-operative only: electrode contacts, apical to basal (LPS)
    meshes/<structure>.vtk         surface meshes (SPACE=LPS), when requested
    case.json                      every parameter and derived measure
    preview.png                    three sections through the modiolus with the truth drawn (optional)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_output
from ..image_io import write_image
from ..markups_io import write_markups

if TYPE_CHECKING:
    from .api import PhantomCase


def write_case(case: PhantomCase, out_dir: str | os.PathLike, *, preview: bool = False, meshes: bool = False) -> Path:
    """Write ``case`` into ``out_dir/<case_id>/`` and return that folder."""
    folder = Path(out_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    cid = case.case_id
    files = {
        "volume": f"{cid}.nrrd",
        "labels": f"{cid}-label.nrrd",
        "landmarks": f"{cid}_landmarks.fcsv",
        "seed": f"{cid}_seed.fcsv",
    }
    write_image(case.image, folder / files["volume"])
    write_image(case.labels, folder / files["labels"])
    write_markups(case.landmarks, folder / files["landmarks"], coordinate_system="LPS")
    write_markups(case.seed_point, folder / files["seed"], coordinate_system="LPS")
    if case.contacts is not None:
        files["contacts"] = f"{cid}_contacts.fcsv"
        write_markups(case.contacts, folder / files["contacts"], coordinate_system="LPS")
    if meshes:
        from ..mesh_io import write_mesh

        for mesh in case.meshes():
            name = f"meshes/{mesh.name.replace(' ', '_')}.vtk"
            (folder / "meshes").mkdir(exist_ok=True)
            write_mesh(mesh, folder / name, coordinate_system="LPS")
            files[f"mesh:{mesh.name}"] = name
    if preview:
        files["preview"] = "preview.png"
        case.write_preview(folder / "preview.png")
    record = dict(case.info)
    record["files"] = files
    with atomic_output(folder / "case.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return folder
