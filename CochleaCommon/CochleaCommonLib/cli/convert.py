"""``cochlea convert INPUT OUTPUT``: convert volumes, markups and meshes between file formats.

Why: the formats Slicer, ITK tools, nnU-Net and mesh tools want differ, and hand conversions are where
LPS/RAS flips and lost directions creep in. This command goes through the project's own readers and
writers, so geometry is kept exactly. The kind of data (volume, markups, mesh) comes from the
extensions; converting across kinds (a volume into a .fcsv) is refused before anything is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import full_suffix
from ..errors import InputFileError, InvalidInputError
from ..image_io import READ_SUFFIXES as VOLUME_READ
from ..image_io import WRITE_SUFFIXES as VOLUME_WRITE

#: Markups and mesh extensions (kept here so choosing the kind does not import vtk; a test checks that
#: they match markups_io and mesh_io).
MARKUPS = (".fcsv", ".mrk.json")
MESH = (".vtk", ".vtp", ".stl", ".ply", ".obj")
KIND_NAMES = {"volume": "a volume", "markups": "a markups point list", "mesh": "a surface mesh"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert", help="convert volumes, markups or meshes between file formats",
        description="Convert a file to another format, keeping its geometry. Volumes: .nrrd .nii .nii.gz .mha "
                    "(and DICOM folders as input); markups: .fcsv .mrk.json; meshes: .vtk .vtp .stl .ply .obj.")
    parser.add_argument("input", type=Path, help="input file (or DICOM folder)")
    parser.add_argument("output", type=Path, help="output file; its extension chooses the format")
    parser.add_argument("--coordinate-system", choices=("LPS", "RAS"), type=str.upper, default=None,
                        help="coordinate system of the output markups or mesh file (default LPS, as Slicer "
                             "writes); volumes are always LPS")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="DICOM series to read when the input folder holds several")
    parser.set_defaults(handler=run)


def _supported_listing(for_output: bool) -> str:
    volume = VOLUME_WRITE if for_output else (*VOLUME_READ, "a DICOM folder")
    return f"volumes {' '.join(volume)}; markups {' '.join(MARKUPS)}; meshes {' '.join(MESH)}"


def kind_of(path: Path, *, for_output: bool) -> str:
    """``"volume"``, ``"markups"`` or ``"mesh"`` from the extension (a folder is a DICOM volume)."""
    if not for_output and path.is_dir():
        return "volume"
    suffix = full_suffix(path)
    if suffix in (VOLUME_WRITE if for_output else VOLUME_READ):
        return "volume"
    if suffix in MARKUPS:
        return "markups"
    if suffix in MESH:
        return "mesh"
    role = "write" if for_output else "read"
    raise InputFileError(f"{path.name}: cannot {role} '{suffix or 'files without an extension'}'. "
                         f"Supported: {_supported_listing(for_output)}.")


def convert(source: Path, target: Path, *, coordinate_system: str | None = None,
            series_uid: str | None = None) -> str:
    """Convert ``source`` into ``target`` (formats from the extensions) and return a one-line summary.

    All checks (existence, kinds, options that do not apply) happen before anything is read.
    """
    if not source.exists():
        raise InputFileError(f"The file {source} does not exist. Check the path.")
    kind_in, kind_out = kind_of(source, for_output=False), kind_of(target, for_output=True)
    if kind_in != kind_out:
        raise InvalidInputError(f"Cannot convert {KIND_NAMES[kind_in]} ({source.name}) into "
                                f"{KIND_NAMES[kind_out]} ({target.name}); choose an output extension for "
                                f"{KIND_NAMES[kind_in]}.")
    if target.is_dir():
        raise InputFileError(f"The output {target} is a folder; give a file name with an extension.")
    if coordinate_system is not None and kind_in == "volume":
        raise InvalidInputError("--coordinate-system applies to markups and meshes only; volume files always "
                                "store their geometry in LPS, as Slicer and ITK expect.")
    if series_uid is not None and not (kind_in == "volume" and (source.is_dir() or full_suffix(source) == ".dcm")):
        raise InvalidInputError("--series-uid applies to DICOM input only.")

    if kind_in == "volume":
        from ..image_io import read_image, write_image

        image = read_image(source, series_uid=series_uid)
        write_image(image, target)
        size = " x ".join(str(n) for n in image.shape_ijk)
        spacing = " x ".join(f"{s:.4g}" for s in image.spacing)
        return f"Wrote {target} (volume, {size} voxels, spacing {spacing} mm)"
    if kind_in == "markups":
        from ..markups_io import read_markups, write_markups

        points = read_markups(source)
        system = coordinate_system or "LPS"
        write_markups(points, target, coordinate_system=system)
        return f"Wrote {target} ({len(points)} point(s), {system} coordinates)"
    from ..mesh_io import read_mesh, write_mesh

    mesh = read_mesh(source)
    system = coordinate_system or "LPS"
    write_mesh(mesh, target, coordinate_system=system)
    return f"Wrote {target} (mesh, {len(mesh.vertices_ras)} vertices, {len(mesh.triangles)} triangles, {system})"


def run(args: argparse.Namespace) -> int:
    """Convert and print what was written."""
    print(convert(args.input, args.output, coordinate_system=args.coordinate_system, series_uid=args.series_uid))
    return 0
