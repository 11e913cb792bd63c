"""Read and write volumes (NRRD, NIfTI, MetaImage, DICOM series) keeping the geometry exactly.

Why SimpleITK: it is ITK's own IO, the same code Slicer uses to read these formats, so spacing,
origin and direction come out as Slicer would see them. ITK works in LPS; this module converts to
and from the RAS :class:`~CochleaCommonLib.image.Image` and nothing else does.

Why NRRD goes through :mod:`~CochleaCommonLib.nrrd_io` first: importing SimpleITK alone takes
0.2-0.3 s, a tenth of ``cochlea landmarks``, which reads one NRRD and writes three. ``nrrd_io``
reads only headers whose geometry ITK derives from ``space``, ``space directions`` and ``space
origin`` alone, by the same rule as ITK's NrrdImageIO, and hands every other NRRD back to
SimpleITK; it writes the header SimpleITK writes. ``Testing/core/test_nrrd_io.py`` checks both
directions against SimpleITK. SimpleITK stays imported lazily, so NRRD reads and writes never load it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_output, full_suffix
from .errors import InputFileError, InvalidInputError
from .geometry import RAS_TO_LPS
from .image import Image
from .nrrd_io import nrrd_type, read_nrrd, write_nrrd

#: Volume formats we write (and read). DICOM series are read only.
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
READ_SUFFIXES = (*WRITE_SUFFIXES, ".nhdr", ".mhd", ".dcm")


def _sitk():
    import SimpleITK as sitk

    return sitk


def image_from_sitk(img) -> Image:
    """Convert a SimpleITK image (LPS geometry, array KJI) into an RAS :class:`Image`."""
    if img.GetDimension() != 3:
        raise InvalidInputError(
            f"A 3D volume is needed, but this image has {img.GetDimension()} dimensions. "
            "Load a 3D CT or cone-beam CT volume."
        )
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"The image has {img.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector data); "
            "a scalar CT volume is needed."
        )
    sitk = _sitk()
    array = sitk.GetArrayFromImage(img)
    direction_lps = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction_lps * np.array(img.GetSpacing())[None, :]
    ijk_to_lps[:3, 3] = img.GetOrigin()
    return Image(array, RAS_TO_LPS @ ijk_to_lps)


def image_to_sitk(image: Image):
    """Convert an :class:`Image` into a SimpleITK image with LPS geometry."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=False)
    ijk_to_lps = RAS_TO_LPS @ image.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
    img.SetDirection(tuple(float(d) for d in (ijk_to_lps[:3, :3] / spacing[None, :]).ravel()))
    return img


def _check_nifti_spacing(img, path: Path) -> None:
    keys = set(img.GetMetaDataKeys())
    for axis in (1, 2, 3):
        key = f"pixdim[{axis}]"
        if key in keys and float(img.GetMetaData(key) or 0) <= 0:
            raise InvalidInputError(
                f"{path.name} has no valid voxel spacing (pixdim[{axis}] = {img.GetMetaData(key)}). "
                "Re-export the volume with its geometry."
            )


def _read_dicom_series(folder: Path, series_uid: str | None) -> Image:
    sitk = _sitk()
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputFileError(f"Cannot scan {folder} for DICOM files: {exc}") from exc
    if not series:
        raise InputFileError(f"No DICOM series was found in {folder}. Choose the folder that holds the .dcm files.")
    if series_uid is None:
        if len(series) > 1:
            listing = ", ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                                for uid in series)
            raise InvalidInputError(
                f"{folder} holds {len(series)} DICOM series: {listing}. Choose one by its series UID."
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InvalidInputError(f"DICOM series {series_uid} is not in {folder}; found: {', '.join(series)}.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputFileError(f"The DICOM series {series_uid} in {folder} could not be read: {exc}") from exc
    if img.GetDimension() == 3 and img.GetSize()[2] < 2:
        raise InvalidInputError(f"The DICOM series in {folder} has a single slice; a 3D volume is needed.")
    return image_from_sitk(img)


def read_image(path: str | os.PathLike, *, series_uid: str | None = None) -> Image:
    """Read a 3D volume from NRRD, NIfTI (.nii/.nii.gz), MetaImage or a DICOM series folder.

    Raises :class:`InputFileError` for missing/unreadable files and :class:`InvalidInputError`
    for images that are not 3D scalar volumes with a spacing.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"The file {p} does not exist. Check the path.")
    if p.is_dir():
        return _read_dicom_series(p, series_uid)
    suffix = full_suffix(p)
    if suffix == ".dcm":
        return _read_dicom_series(p.parent, series_uid)
    if suffix not in READ_SUFFIXES:
        raise InputFileError(
            f"{p.name}: unsupported volume format '{suffix}'. Use one of {', '.join(READ_SUFFIXES)} or a DICOM folder."
        )
    if suffix in (".nrrd", ".nhdr"):
        image = read_nrrd(p)  # refuses 2D and spacing-less volumes; None: SimpleITK decides
        if image is not None:
            return image
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputFileError(
            f"{p.name} could not be read as a volume ({first}). The file may be truncated or not a {suffix} image."
        ) from exc
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_spacing(img, p)
    return image_from_sitk(img)


def write_image(image: Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` to NRRD, NIfTI or MetaImage (LPS geometry on disk), atomically.

    Returns the written path. Nothing is left at ``path`` if writing fails.
    """
    p = Path(path)
    suffix = full_suffix(p)
    if suffix not in WRITE_SUFFIXES:
        raise InputFileError(f"{p.name}: cannot write '{suffix}' volumes; use one of {', '.join(WRITE_SUFFIXES)}.")
    if suffix == ".nrrd" and nrrd_type(image.array.dtype) is not None:
        return write_nrrd(image, p, compress=compress)
    sitk = _sitk()
    img = image_to_sitk(image)
    with atomic_output(p) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise InputFileError(f"Could not write {p}: {str(exc).strip().splitlines()[-1]}") from exc
    return p
