"""What every format module shares: the in-memory :class:`Volume`, the streaming
:class:`VolumeReader` interface, file-name helpers and the suffixes each format answers to.

Every array is (z, y, x) with a voxel size (z, y, x) in µm. This module imports no format
library; the format modules (:mod:`~selma3d.io.tiff`, :mod:`~selma3d.io.nifti`,
:mod:`~selma3d.io.mha`, :mod:`~selma3d.io.omezarr`) build on it and the registry in
:mod:`selma3d.io` dispatches to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selma3d.core.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
MHA_SUFFIXES = (".mha", ".mhd", ".nrrd")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")

SpacingSource = str  # "argument", "file" or "default"


@dataclass
class Volume:
    """A 3D array in (z, y, x) with its voxel size in µm and, for NIfTI, its affine."""

    data: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def case_name(path: str | Path) -> str:
    """File name without its (possibly double) extension: ``a_0000.nii.gz`` -> ``a_0000``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + TIFF_SUFFIXES + MHA_SUFFIXES + ZARR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def swap_xz(triple) -> tuple[float, float, float]:
    """(x, y, z) <-> (z, y, x) as floats: NIfTI and SimpleITK give voxel sizes as (x, y, z)."""
    return (float(triple[2]), float(triple[1]), float(triple[0]))


_DIGITS = re.compile(r"(\d+)")


def split_digits(name: str) -> list[str]:
    """``"img_z10.tif"`` -> ``["img_z", "10", ".tif"]``: text and digit runs alternate, digits at odd places."""
    return _DIGITS.split(name)


def natural_key(name: str) -> list:
    """Sort key that orders ``z2`` before ``z10``."""
    return [int(t) if t.isdigit() else t.lower() for t in split_digits(name)]


# ---------------------------------------------------------------------------------------------
# Streaming readers: one interface for volumes too large to hold in memory (whole brains are
# 10-100s of GiB). A reader knows shape, dtype and spacing up front and hands out (z, y, x)
# blocks on demand, so ingest/downsample/patchify keep memory bounded by one slab.


class VolumeReader:
    """A (z, y, x) volume read block by block.

    Attributes:
        path: the file or folder (None for in-memory arrays).
        shape: (z, y, x) voxels.
        dtype: numpy dtype of the blocks returned.
        spacing: voxel size (z, y, x) µm.
        spacing_source: ``"argument"`` (given by the caller), ``"file"`` or ``"default"``
            (the file carries none: (1, 1, 1) was assumed).
        z_chunk: reads whose z-range is aligned to multiples of this are cheapest.
        row_chunk: rows per cheap y-band, or None when a y-band costs as much as whole planes
            (compressed TIFF slices, NIfTI), in which case callers should read whole planes.
    """

    path: Path | None = None
    shape: tuple[int, int, int] = (0, 0, 0)
    dtype: np.dtype = np.dtype("uint16")
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    spacing_source: SpacingSource = "default"
    z_chunk: int = 1
    row_chunk: int | None = None

    def set_spacing(self, given=None, found=None, source: SpacingSource = "file") -> None:
        """``given`` (the caller's, source ``argument``) wins over ``found`` (what the file says,
        marked ``source``); with neither, (1, 1, 1) marked ``default``."""
        if given is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in given), "argument"
        elif found is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in found), source
        else:
            self.spacing, self.spacing_source = (1.0, 1.0, 1.0), "default"

    def read_slab(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0:z1`` as a (z1 - z0, y, x) array."""
        return self.read_block(z0, z1)

    def read_block(self, z0: int, z1: int, y0: int = 0, y1: int | None = None,
                   x0: int = 0, x1: int | None = None) -> np.ndarray:
        """The box ``[z0:z1, y0:y1, x0:x1]``; float data is checked for NaN/inf."""
        Z, Y, X = self.shape
        y1 = Y if y1 is None else y1
        x1 = X if x1 is None else x1
        if not (0 <= z0 <= z1 <= Z and 0 <= y0 <= y1 <= Y and 0 <= x0 <= x1 <= X):
            raise IndexError(f"{self.path}: block [{z0}:{z1}, {y0}:{y1}, {x0}:{x1}] outside shape {self.shape}")
        arr = self._read(z0, z1, y0, y1, x0, x1)
        if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            bad = int(np.argmax(~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)))
            raise InputError(self._where(z0 + bad), "finite intensities", f"NaN or inf in plane z={z0 + bad}")
        return arr

    def read_volume(self, **meta) -> Volume:
        """The whole volume in memory, with ``meta`` and the spacing's source."""
        return Volume(self.read_slab(0, self.shape[0]), spacing=self.spacing,
                      meta={**meta, "spacing_source": self.spacing_source})

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def _read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def _where(self, z: int) -> str:
        return f"{self.path} (z={z})"

    def close(self) -> None:
        """Release file handles and threads."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path}, shape={self.shape}, dtype={np.dtype(self.dtype)}, "
                f"spacing={self.spacing})")


class ArrayReader(VolumeReader):
    """An in-memory (z, y, x) array behind the reader interface (tests, small volumes)."""

    def __init__(self, data: np.ndarray, spacing=(1.0, 1.0, 1.0), path: str | Path | None = None,
                 z_chunk: int = 1, row_chunk: int | None = None):
        data = np.asarray(data)
        if data.ndim != 3:
            raise InputError(path, "a 3D (z, y, x) array", f"shape {data.shape}")
        self.data = data
        self.path = None if path is None else Path(path)
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = data.dtype
        self.set_spacing(spacing)
        self.z_chunk = z_chunk
        self.row_chunk = row_chunk

    def _read(self, z0, z1, y0, y1, x0, x1):
        return np.array(self.data[z0:z1, y0:y1, x0:x1])
