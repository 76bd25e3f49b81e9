"""NIfTI (``.nii``, ``.nii.gz``) in the (z, y, x) convention.

nibabel sees a NIfTI image as (x, y, z) (the file's i, j, k). Here it is converted *without
reorientation*: the array equals SimpleITK's ``GetArrayFromImage`` (nibabel's data transposed
(2, 1, 0)), as the official SELMA3D evaluators see it, and the voxel size is (z, y, x). The affine
is kept so predictions can be written back with the input's geometry; arrays written without one
get the LPS affine SELMA3D patches carry (:func:`lps_affine`). NIfTI arrays are transposed
between the two orders here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.io.volume import Volume, VolumeReader, swap_xz


def read_nifti(path: str | Path) -> Volume:
    """A whole NIfTI image in memory as (z, y, x), with its affine (no reorientation)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types on corrupt files
        raise InputError(path, "a readable NIfTI file", f"{type(exc).__name__}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, "a 3D NIfTI image", f"shape {data.shape}")
    zooms = img.header.get_zooms()[:3]
    return Volume(
        np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing=swap_xz(zooms),
        affine=img.affine.copy(),
        meta={"format": "nifti"},
    )


def lps_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The affine SELMA3D patches carry (LPS storage: diag(-sx, -sy, sz))."""
    sz, sy, sx = spacing
    return np.diag([-sx, -sy, sz, 1.0])


def write_nifti(path: str | Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                affine: np.ndarray | None = None, dtype=None) -> Path:
    """Write a (z, y, x) array as NIfTI (LPS affine unless one is given), atomically."""
    import nibabel as nib

    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D (z, y, x) array, found shape {data.shape}")
    arr = np.asarray(data if dtype is None else data.astype(dtype, copy=False))
    if affine is None:
        affine = lps_affine(spacing)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine)
    img.header.set_zooms(tuple(abs(float(v)) for v in np.linalg.norm(affine[:3, :3], axis=0)))
    img.header.set_xyzt_units("micron")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


class NiftiReader(VolumeReader):
    """NIfTI read through nibabel's lazy ``dataobj`` (slabs along the file's k axis, which is
    our z), converted to (z, y, x) without reorientation like :func:`read_nifti`."""

    def __init__(self, path: str | Path, spacing=None):
        import nibabel as nib

        self.path = Path(path)
        try:
            # keep a .gz stream open: successive slabs then decompress forward, not from the start
            self._img = nib.load(str(self.path), keep_file_open=True)
            hdr_shape = tuple(int(s) for s in self._img.shape)
            zooms = self._img.header.get_zooms()[:3]
        except Exception as exc:
            raise InputError(self.path, "a readable NIfTI file", f"{type(exc).__name__}: {exc}") from exc
        if len(hdr_shape) == 4 and hdr_shape[3] == 1:
            self._extra = (0,)
        elif len(hdr_shape) == 3:
            self._extra = ()
        else:
            raise InputError(self.path, "a 3D NIfTI image", f"shape {hdr_shape}")
        self.affine = self._img.affine.copy()
        self.shape = (hdr_shape[2], hdr_shape[1], hdr_shape[0])
        self.set_spacing(spacing, swap_xz(zooms))
        self.dtype = self._raw(0, min(1, self.shape[0]), 0, min(1, self.shape[1]), 0, min(1, self.shape[2])).dtype
        self.z_chunk = 1
        self.row_chunk = None

    def _raw(self, z0, z1, y0, y1, x0, x1) -> np.ndarray:
        try:
            arr = np.asarray(self._img.dataobj[(slice(x0, x1), slice(y0, y1), slice(z0, z1)) + self._extra])
        except Exception as exc:
            raise InputError(self.path, "readable NIfTI voxel data", f"{type(exc).__name__}: {exc}") from exc
        return arr

    def _read(self, z0, z1, y0, y1, x0, x1):
        return np.ascontiguousarray(self._raw(z0, z1, y0, y1, x0, x1).transpose(2, 1, 0))

    def close(self) -> None:
        opener = getattr(self._img.dataobj, "_opener", None)
        if opener is not None:
            opener.close_if_mine()


def check_nifti_pair(image_path: Path, label_path: Path, atol: float = 1e-4) -> None:
    """Raise InputError unless two NIfTI files share shape and affine (headers only, no voxels)."""
    import nibabel as nib

    heads = []
    for p in (image_path, label_path):
        try:
            img = nib.load(str(p))
        except Exception as exc:
            raise InputError(p, "a readable NIfTI file", f"{type(exc).__name__}: {exc}") from exc
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        heads.append((shape, img.affine))
    (ishape, iaff), (lshape, laff) = heads
    if ishape != lshape:
        raise InputError(label_path, f"shape {ishape} (x, y, z) like its image {image_path.name}", f"shape {lshape}")
    if not np.allclose(iaff, laff, atol=atol):
        raise InputError(label_path, f"the affine of its image {image_path.name} {np.round(iaff, 4).tolist()}",
                         f"affine {np.round(laff, 4).tolist()}")
