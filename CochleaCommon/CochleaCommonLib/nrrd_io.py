"""Read and write plain 3D scalar NRRD volumes without SimpleITK, with the geometry ITK gives.

Why: ``cochlea landmarks`` reads one volume and writes three probability maps, nearly always NRRD
(Slicer's own format). Importing SimpleITK costs 0.2-0.3 s of that command's ~3 s; pynrrd imports
in a few milliseconds.

Why the result equals ITK's (and so Slicer's): for the headers accepted here the geometry is fully
stated by ``space``, ``space directions`` and ``space origin``. ITK's NrrdImageIO takes each
direction vector's length as the spacing and the vector divided by it as the direction cosine,
the origin as written (zero when absent), and turns RAS or LAS coordinates into LPS by negating
the R and A components. The matrix ``direction * spacing`` it implies is the direction vectors
themselves, which is what :func:`read_nrrd` uses. Every header field that could change the
geometry, the voxel type or the axis meaning in any other way (see :func:`_ijk_to_lps`) makes
:func:`read_nrrd` return ``None``, and the caller reads the file with SimpleITK as before, so an
unusual file is never interpreted differently from Slicer. ``Testing/core/test_nrrd_io.py``
compares both readers on real files.

:func:`write_nrrd` writes the header SimpleITK writes (same fields, numbers with 17 significant
digits). It does not use ``nrrd.write``: that stamps the writing time into a comment (so the same
volume gives different files) with ``datetime.utcnow``, deprecated since Python 3.12.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .atomic import atomic_output
from .errors import InputFileError, InvalidInputError
from .geometry import RAS_TO_LPS
from .image import Image

#: Sign that turns each coordinate of a NRRD space into LPS (as ITK's NrrdImageIO converts them).
_SIGNS_TO_LPS = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
}

#: Encodings both pynrrd and ITK decode (ITK cannot read bzip2, so neither may this module).
_ENCODINGS = ("raw", "gzip", "gz")

#: Fields that ITK refuses beside ``space`` and ``space directions``; SimpleITK reports the error.
_FIELDS_ITK_REFUSES = ("space dimension", "spacings", "axis mins", "axismins", "axis maxs", "axismaxs", "units")

#: NRRD type names for numpy kinds and sizes, as ITK writes them; SimpleITK reads them back as these dtypes.
_NRRD_TYPES = {
    "i1": "signed char", "u1": "unsigned char", "i2": "short", "u2": "unsigned short",
    "i4": "int", "u4": "unsigned int", "i8": "long long int", "u8": "unsigned long long int",
    "f4": "float", "f8": "double",
}

#: zlib level for written files: level 1 is as fast as SimpleITK's gzip (a 68x85x85 float map in
#: ~10 ms) and 4 % larger; level 9 takes 16 times as long.
GZIP_LEVEL = 1


def check_volume_header(header: dict, path: Path) -> None:
    """Refuse NRRD files that are not 3D or have no spacing (ITK would silently assume 1 mm)."""
    if header.get("dimension", 3) != 3:
        raise InvalidInputError(
            f"{path.name} is a {header.get('dimension')}D image; a 3D CT or cone-beam CT volume is needed."
        )
    if "space directions" not in header and "spacings" not in header:
        raise InvalidInputError(
            f"{path.name} has no voxel spacing ('space directions' or 'spacings' missing in its header), "
            "so distances in millimetres cannot be measured. Re-export the volume from Slicer or the scanner "
            "with its geometry."
        )


def read_header(fh: BinaryIO, path: Path) -> dict:
    """Parse the header of an open NRRD file, leaving ``fh`` at the data; a clear error if unreadable."""
    import nrrd

    try:
        return nrrd.read_header(fh)
    except Exception as exc:  # pynrrd raises several types for a broken header
        raise InputFileError(
            f"{path.name} is not a readable NRRD file ({exc}). Check that the file is complete."
        ) from exc


def _ijk_to_lps(header: dict) -> np.ndarray | None:
    """The 4x4 IJK-to-LPS matrix of a header that ITK reads as plain directions; ``None`` for any other.

    Accepted: an LPS, RAS or LAS ``space``, three finite, independent ``space directions``, an
    optional ``space origin``, kinds ``domain``/``space``, raw or gzip data in one file. Fields
    that ITK keeps only as metadata (centerings, thicknesses, labels, a measurement frame, which
    applies to vector values and these are scalars) do not matter.
    """
    signs = _SIGNS_TO_LPS.get(str(header.get("space", "")).lower())
    if signs is None:  # no space (spacings only), a 4D space, scanner-xyz, ...: ITK's own rules apply
        return None
    if str(header.get("encoding", "")).lower() not in _ENCODINGS or header.get("type") == "block":
        return None
    if any(field in header for field in _FIELDS_ITK_REFUSES):
        return None
    kinds = header.get("kinds", ["domain"] * 3)
    if len(kinds) != 3 or any(str(kind).lower() not in ("domain", "space") for kind in kinds):
        return None  # a vector, list or time axis: not three plain space axes
    data_file = str(header.get("data file", header.get("datafile", "")))
    if data_file.upper() == "LIST" or len(data_file.split()) > 1:
        return None  # data split over several files
    try:
        directions = np.array(header.get("space directions"), dtype=np.float64)  # one row per axis i, j, k
        origin = np.array(header.get("space origin", (0.0, 0.0, 0.0)), dtype=np.float64)
    except (TypeError, ValueError):  # an axis without a direction ("none")
        return None
    if directions.shape != (3, 3) or origin.shape != (3,):
        return None
    if not (np.all(np.isfinite(directions)) and np.all(np.isfinite(origin))):
        return None
    lengths = np.linalg.norm(directions, axis=1)
    if np.any(lengths == 0) or abs(np.linalg.det(directions / lengths[:, None])) < 1e-6:
        return None  # ITK refuses zero spacing and degenerate directions with its own message
    matrix = np.eye(4)
    matrix[:3, :3] = (directions * signs).T
    matrix[:3, 3] = origin * signs
    return matrix


def read_nrrd(path: str | os.PathLike) -> Image | None:
    """Read a plain 3D scalar NRRD (attached or detached header) into an RAS :class:`Image`.

    Returns ``None`` when the header holds anything whose meaning is ITK's to decide (see
    :func:`_ijk_to_lps`) and when pynrrd cannot decode the data (truncated, damaged, or a layout
    only ITK reads): the caller then reads the file with SimpleITK, which gives the volume or the
    error it always gave. Raises :class:`InputFileError` for an unreadable header and
    :class:`InvalidInputError` for a volume that is not 3D or has no spacing.
    """
    import nrrd

    p = Path(path)
    try:
        fh = open(p, "rb")  # closed by the with block below, after the data
    except OSError as exc:
        raise InputFileError(f"{p.name} could not be opened ({exc.strerror}). Check the file's permissions.") from exc
    with fh:
        header = read_header(fh, p)
        check_volume_header(header, p)
        ijk_to_lps = _ijk_to_lps(header)
        if ijk_to_lps is None:
            return None
        try:
            data = nrrd.read_data(header, fh, str(p), index_order="C")
        except Exception:  # SimpleITK reads it again and gives the volume or reports the damage as before
            return None
    array = data.astype(data.dtype.newbyteorder("="), copy=False)  # SimpleITK gives native byte order
    return Image(array, RAS_TO_LPS @ ijk_to_lps)


def nrrd_type(dtype: np.dtype) -> str | None:
    """The NRRD type name ITK writes for ``dtype``; ``None`` for types this module does not write."""
    dtype = np.dtype(dtype)
    return _NRRD_TYPES.get(f"{dtype.kind}{dtype.itemsize}")


def _number(x: float) -> str:
    return f"{float(x) + 0.0:.17g}"  # + 0.0 writes -0.0 as 0; 17 digits keep every float64 exactly


def _vector(values) -> str:
    return "(" + ",".join(_number(v) for v in values) + ")"


def nrrd_header(image: Image, *, compress: bool = True) -> bytes:
    """The header SimpleITK writes for ``image``: LPS space, one direction vector per axis, little endian."""
    type_name = nrrd_type(image.array.dtype)
    if type_name is None:
        raise InvalidInputError(f"Voxels of type {image.array.dtype} cannot be written to NRRD.")
    ijk_to_lps = RAS_TO_LPS @ image.ijk_to_ras
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {type_name}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(n) for n in image.shape_ijk),
        "space directions: " + " ".join(_vector(ijk_to_lps[:3, axis]) for axis in range(3)),
        "kinds: domain domain domain",
        *(["endian: little"] if image.array.dtype.itemsize > 1 else []),
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + _vector(ijk_to_lps[:3, 3]),
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def write_nrrd(image: Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` to a ``.nrrd`` file as SimpleITK would, atomically; returns the path.

    Voxels keep their dtype (stored little endian); ``compress`` selects gzip or raw encoding.
    Nothing is left at ``path`` if writing fails.
    """
    p = Path(path)
    header = nrrd_header(image, compress=compress)
    array = np.ascontiguousarray(image.array, dtype=image.array.dtype.newbyteorder("<"))
    voxels = array.reshape(-1).view(np.uint8)  # the bytes in file order, without a copy
    with atomic_output(p) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(header)
                if compress:
                    gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS | 16)  # gzip stream
                    fh.write(gz.compress(voxels))
                    fh.write(gz.flush())
                else:
                    fh.write(voxels)
        except OSError as exc:
            raise InputFileError(f"Could not write {p}: {exc.strerror or exc}") from exc
    return p
