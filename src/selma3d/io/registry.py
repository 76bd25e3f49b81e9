"""One table of formats, and the functions that dispatch on it.

A path's format is found once, in :func:`format_of`: a folder is an (OME-)Zarr store when it
looks like one, else a folder of TIFF z-slices; a file goes by its suffix. Each
:class:`Format` names the module functions that open a streaming reader, read a whole volume
(where the format keeps more than the reader, such as a NIfTI affine) and write one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from selma3d.core.errors import InputError
from selma3d.io.mha import SitkReader, read_mha, write_mha
from selma3d.io.nifti import NiftiReader, check_nifti_pair, read_nifti, write_nifti
from selma3d.io.omezarr import ZarrReader, is_zarr_store, read_zarr_volume, write_zarr_volume
from selma3d.io.tiff import TiffSeriesReader, TiffStackReader, write_tiff_stack
from selma3d.io.volume import (MHA_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES, ArrayReader, Volume,
                               VolumeReader)


@dataclass(frozen=True)
class Format:
    """How one format is read and written.

    Attributes:
        name: also ``Volume.meta["format"]`` when read through the generic path.
        suffixes: file-name endings (lower case) it answers to; empty for TIFF slice folders.
        open: ``(path, workers, level) -> VolumeReader``.
        read: ``path -> Volume`` when a whole read keeps more than the reader does; else the
            reader's :meth:`~selma3d.io.volume.VolumeReader.read_volume`.
        write: ``(path, data, spacing, affine) -> Path``, or None where it cannot be written.
    """

    name: str
    suffixes: tuple[str, ...]
    open: Callable[[Path, int, int], VolumeReader]
    read: Callable[[Path], Volume] | None = None
    write: Callable[[Path, np.ndarray, tuple, np.ndarray | None], Path] | None = None


ZARR = Format("zarr", ZARR_SUFFIXES, lambda p, workers, level: ZarrReader(p, level=level, workers=workers),
              read=read_zarr_volume, write=lambda p, data, spacing, affine: write_zarr_volume(p, data, spacing))
TIFF_SERIES = Format("tiff-series", (), lambda p, workers, level: TiffSeriesReader(p, workers=workers))
NIFTI = Format("nifti", NIFTI_SUFFIXES, lambda p, workers, level: NiftiReader(p),
               read=read_nifti, write=lambda p, data, spacing, affine: write_nifti(p, data, spacing, affine))
MHA = Format("mha", MHA_SUFFIXES, lambda p, workers, level: SitkReader(p),
             read=read_mha, write=lambda p, data, spacing, affine: write_mha(p, data, spacing))
TIFF = Format("tiff", TIFF_SUFFIXES, lambda p, workers, level: TiffStackReader(p),
              write=lambda p, data, spacing, affine: write_tiff_stack(p, data))

#: File formats by suffix (folders: :data:`ZARR` or :data:`TIFF_SERIES`, see :func:`format_of`).
FILE_FORMATS = (NIFTI, MHA, TIFF)
FORMATS = (ZARR, TIFF_SERIES) + FILE_FORMATS

def format_of(path: str | Path) -> Format:
    """The format of an existing file or folder; InputError when there is none."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "an existing image file, TIFF folder or zarr store", "nothing at that path")
    if path.is_dir():
        return ZARR if is_zarr_store(path) else TIFF_SERIES
    lower = path.name.lower()
    for fmt in FILE_FORMATS:
        if lower.endswith(fmt.suffixes):
            return fmt
    raise InputError(path, "a .nii/.nii.gz/.mha/.tif file, a TIFF folder or a .zarr store",
                     f"suffix {''.join(path.suffixes) or '(none)'}")


def read_volume(path: str | Path, spacing: tuple[float, float, float] | None = None) -> Volume:
    """Read NIfTI, MHA/NRRD, multi-page TIFF, a folder of TIFF z-slices, or (OME-)Zarr.

    Args:
        path: the file or folder.
        spacing: voxel size (z, y, x) µm overriding what the file says (TIFF carries none).
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt.read is not None:
        vol = fmt.read(path)
    else:
        with fmt.open(path, 2, 0) as reader:
            vol = reader.read_volume(format=fmt.name)
    if vol.data.ndim != 3:
        raise InputError(path, "a 3D volume", f"{vol.data.ndim}D array of shape {vol.data.shape}")
    if spacing is not None:
        vol.spacing = tuple(float(s) for s in spacing)
    return vol


def write_volume(path: str | Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0), affine=None, dtype=None) -> Path:
    """Write by suffix: NIfTI (with ``affine``, else LPS), MHA/NRRD, multi-page TIFF or OME-Zarr."""
    lower = str(path).lower()
    for fmt in FORMATS:
        if fmt.write is not None and fmt.suffixes and lower.endswith(fmt.suffixes):
            arr = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype, copy=False)
            return fmt.write(path, arr, spacing, affine)
    raise ValueError(f"{path}: expected a .nii/.nii.gz/.mha/.tif/.zarr output name")


def open_reader(source, spacing=None, workers: int = 2, level: int = 0) -> VolumeReader:
    """A :class:`VolumeReader` for a path (TIFF folder, multi-page TIFF, NIfTI, MHA/NRRD,
    (OME-)Zarr at ``level``), an in-memory array or :class:`Volume`, or a reader (returned as is).

    Args:
        spacing: voxel size (z, y, x) µm overriding the file's (TIFF usually carries none).
        workers: threads decoding TIFF slices.
    """
    if isinstance(source, VolumeReader):
        reader = source
    elif isinstance(source, Volume):
        reader = ArrayReader(source.data, source.spacing)
    elif isinstance(source, np.ndarray):
        reader = ArrayReader(source, spacing or (1.0, 1.0, 1.0))
    else:
        path = Path(source)
        reader = format_of(path).open(path, workers, level)
    if spacing is not None:
        reader.set_spacing(spacing)
    return reader


def check_pair(image_path: str | Path, label_path: str | Path, atol: float = 1e-4) -> None:
    """Raise InputError unless an image and its label share shape and geometry.

    NIfTI pairs are compared by header (shape and affine, no voxel reading); other formats by
    shape and spacing.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    if all(p.name.lower().endswith(NIFTI_SUFFIXES) for p in (image_path, label_path)):
        check_nifti_pair(image_path, label_path, atol)
        return
    with open_reader(image_path) as a, open_reader(label_path) as b:
        if a.shape != b.shape:
            raise InputError(label_path, f"shape {a.shape} (z, y, x) like its image {image_path.name}", f"shape {b.shape}")
        if not np.allclose(a.spacing, b.spacing, rtol=1e-4):
            raise InputError(label_path, f"spacing {a.spacing} like its image {image_path.name}", f"spacing {b.spacing}")
