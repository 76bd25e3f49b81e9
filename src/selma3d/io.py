"""Readers and writers for the formats light-sheet data comes in, in one axis convention.

Every array leaves this module as (z, y, x) with a voxel size (z, y, x) in µm. NIfTI is
converted *without reorientation*: the array equals SimpleITK's ``GetArrayFromImage`` (nibabel's
data transposed (2, 1, 0)), as the official SELMA3D evaluators see it; the affine is kept so
predictions can be written back with the input's geometry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
MHA_SUFFIXES = (".mha", ".mhd", ".nrrd")


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
    for suffix in NIFTI_SUFFIXES + TIFF_SUFFIXES + MHA_SUFFIXES + (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | Path, spacing: tuple[float, float, float] | None = None) -> Volume:
    """Read NIfTI, MHA/NRRD, multi-page TIFF, a folder of TIFF z-slices, or (OME-)Zarr.

    Args:
        path: the file or folder.
        spacing: voxel size (z, y, x) µm overriding what the file says (TIFF carries none).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "an existing image file or TIFF folder", "nothing at that path")
    lower = path.name.lower()
    if path.is_dir() and (lower.endswith(".zarr") or (path / ".zattrs").exists() or (path / "zarr.json").exists()):
        from .zarrstore import read_zarr_volume

        vol = read_zarr_volume(path)
    elif path.is_dir():
        with TiffSeriesReader(path) as reader:
            vol = Volume(reader.read_slab(0, reader.shape[0]), spacing=reader.spacing,
                         meta={"format": "tiff-series", "spacing_source": reader.spacing_source})
    elif lower.endswith(NIFTI_SUFFIXES):
        vol = _read_nifti(path)
    elif lower.endswith(MHA_SUFFIXES):
        vol = _read_sitk(path)
    elif lower.endswith(TIFF_SUFFIXES):
        with TiffStackReader(path) as reader:
            vol = Volume(reader.read_slab(0, reader.shape[0]), spacing=reader.spacing,
                         meta={"format": "tiff", "spacing_source": reader.spacing_source})
    else:
        raise InputError(path, "a .nii/.nii.gz/.mha/.tif file, a TIFF folder or a .zarr store",
                         f"suffix {''.join(path.suffixes) or '(none)'}")
    if vol.data.ndim != 3:
        raise InputError(path, "a 3D volume", f"{vol.data.ndim}D array of shape {vol.data.shape}")
    if spacing is not None:
        vol.spacing = tuple(float(s) for s in spacing)
    return vol


def _read_nifti(path: Path) -> Volume:
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
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        affine=img.affine.copy(),
        meta={"format": "nifti"},
    )


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, "a readable MetaImage/NRRD file", str(exc).strip().splitlines()[-1]) from exc
    sx, sy, sz = img.GetSpacing()[:3]
    return Volume(sitk.GetArrayFromImage(img), spacing=(sz, sy, sx), meta={"format": "sitk"})


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        data = tifffile.imread(str(path))
    except Exception as exc:
        raise InputError(path, "a readable TIFF file", f"{type(exc).__name__}: {exc}") from exc
    if data.ndim == 2:
        data = data[None]
    return data


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key that orders ``z2`` before ``z10``."""
    return [int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(name)]


def list_tiff_series(folder: str | Path) -> list[Path]:
    """The TIFF slices of a folder in z order (natural sort of the file names)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.name.lower().endswith(TIFF_SUFFIXES) and not p.name.startswith(".")]
    if not files:
        raise InputError(folder, "a folder of .tif/.tiff z-slices", "no TIFF files")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_tiff_slice(path: Path, shape: tuple[int, int] | None = None, dtype=None) -> np.ndarray:
    """One z-slice, checked against the series' shape and dtype."""
    import tifffile

    try:
        arr = tifffile.imread(str(path))
    except Exception as exc:
        raise InputError(path, "a readable 2D TIFF slice", f"{type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2:
        raise InputError(path, "a 2D slice", f"array of shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(path, f"slice shape {tuple(shape)} like the first slice", f"{arr.shape}")
    if dtype is not None and arr.dtype != dtype:
        raise InputError(path, f"dtype {np.dtype(dtype)} like the first slice", f"{arr.dtype}")
    return arr


def read_tiff_series(folder: str | Path, workers: int = 2) -> np.ndarray:
    """Read a whole folder of z-slices into memory (small volumes; stream large ones with
    :func:`open_reader`). Every slice is validated as :class:`TiffSeriesReader` does."""
    with TiffSeriesReader(folder, workers=workers) as reader:
        return reader.read_slab(0, reader.shape[0])


def write_tiff_series(folder: str | Path, data: np.ndarray, prefix: str = "slice",
                      spacing: tuple[float, float, float] | None = None) -> list[Path]:
    """Write (z, y, x) as one 2D TIFF per z-slice, zero-padded names, atomically as a folder."""
    import tifffile

    folder = Path(folder)
    width = max(4, len(str(data.shape[0] - 1)))
    paths = []
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for z in range(data.shape[0]):
            name = f"{prefix}_z{z:0{width}d}.tif"
            kwargs = {}
            if spacing is not None:
                kwargs = {"resolution": (1.0 / spacing[2], 1.0 / spacing[1]), "resolutionunit": "NONE"}
            tifffile.imwrite(str(tmp / name), data[z], **kwargs)
            paths.append(folder / name)
    return paths


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


def write_mha(path: str | Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) array as MetaImage, atomically."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(data))
    img.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return Path(path)


def write_volume(path: str | Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0), affine=None, dtype=None) -> Path:
    """Write by suffix: NIfTI, MHA or multi-page TIFF."""
    lower = str(path).lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return write_nifti(path, data, spacing, affine, dtype)
    arr = data if dtype is None else data.astype(dtype)
    if lower.endswith(MHA_SUFFIXES):
        return write_mha(path, arr, spacing)
    if lower.endswith(TIFF_SUFFIXES):
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(str(tmp), np.asarray(arr))
        return Path(path)
    raise ValueError(f"{path}: expected a .nii/.nii.gz/.mha/.tif output name")
