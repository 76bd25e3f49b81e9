"""Readers and writers for the formats light-sheet data comes in, in one axis convention.

Every array leaves this module as (z, y, x) with a voxel size (z, y, x) in µm. NIfTI is
converted *without reorientation*: the array equals SimpleITK's ``GetArrayFromImage`` (nibabel's
data transposed (2, 1, 0)), as the official SELMA3D evaluators see it; the affine is kept so
predictions can be written back with the input's geometry.

Volumes too large for memory are read through :func:`open_reader`, which returns a
:class:`VolumeReader` (``shape``, ``dtype``, ``spacing``, ``read_slab(z0, z1)``,
``read_block(...)``) for TIFF slice folders, multi-page TIFF, NIfTI, MHA/NRRD and (OME-)Zarr.
Readers validate as they open (slice headers, numbering, shapes, dtypes) and reject NaN/inf.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError

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
        from selma3d.io.omezarr import read_zarr_volume

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


# ---------------------------------------------------------------------------------------------
# Streaming readers: one interface for volumes too large to hold in memory (whole brains are
# 10-100s of GiB). A reader knows shape, dtype and spacing up front and hands out (z, y, x)
# blocks on demand, so ingest/downsample/patchify keep memory bounded by one slab.

SpacingSource = str  # "argument", "file" or "default"


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
        self.spacing = tuple(float(s) for s in spacing)
        self.spacing_source = "argument"
        self.z_chunk = z_chunk
        self.row_chunk = row_chunk

    def _read(self, z0, z1, y0, y1, x0, x1):
        return np.array(self.data[z0:z1, y0:y1, x0:x1])


def _tiff_spacing(tif) -> tuple[tuple[float, float, float], SpacingSource]:
    """Voxel size from ImageJ metadata (unit µm) or from resolution tags without a unit (as
    :func:`write_tiff_series` stores it); otherwise (1, 1, 1) marked ``default``."""
    page = tif.pages.first
    try:
        xres, yres = (float(v) for v in page.resolution)
        unit = int(page.resolutionunit)
    except Exception:
        return (1.0, 1.0, 1.0), "default"
    ij = tif.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() in ("um", "micron", "microns", "µm", "\\u00b5m", "μm") and xres > 0 and yres > 0:
        return (float(ij.get("spacing", 1.0)), 1.0 / yres, 1.0 / xres), "file"
    if unit == 1 and xres > 0 and yres > 0 and (xres, yres) != (1.0, 1.0):
        return (1.0, 1.0 / yres, 1.0 / xres), "file"
    return (1.0, 1.0, 1.0), "default"


def _tiff_slice_header(path: Path) -> dict:
    """Shape, dtype and pixel-data location of one slice, with truncation checked from the
    header alone (no pixel decoding), so a bad slice is found before anything is written."""
    import tifffile

    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            shape = tuple(int(s) for s in page.shape)
            dtype = np.dtype(page.dtype)
            byteorder = tif.byteorder
            contiguous = bool(page.is_contiguous) and page.compression == 1 and not page.is_tiled
            offsets = [int(o) for o in page.dataoffsets]
            counts = [int(c) for c in page.databytecounts]
            spp = int(page.samplesperpixel)
            spacing = _tiff_spacing(tif)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, "a readable TIFF slice", f"{type(exc).__name__}: {exc}") from exc
    if len(shape) != 2 or spp != 1:
        raise InputError(path, "a 2D single-channel slice", f"a page of shape {shape} with {spp} samples per pixel")
    if contiguous:
        need = offsets[0] + int(np.prod(shape)) * dtype.itemsize
        if size < need:
            raise InputError(path, f"{int(np.prod(shape)) * dtype.itemsize} bytes of pixel data from offset {offsets[0]}",
                             f"a file of {size} bytes (truncated)")
    else:
        ends = [o + c for o, c in zip(offsets, counts)]
        if not ends or max(ends) > size or min(counts, default=0) <= 0:
            raise InputError(path, "pixel data inside the file", f"data ending at byte {max(ends, default=0)} of a "
                             f"{size}-byte file (truncated or corrupt)")
    return {"shape": shape, "dtype": dtype, "byteorder": byteorder, "contiguous": contiguous,
            "offset": offsets[0] if offsets else 0, "spacing": spacing}


def check_series_numbering(files: list[Path]) -> None:
    """Raise InputError when a numbered slice series has a gap or a repeated number.

    The slice number is the digit group that varies between file names (the one with most
    distinct values when several vary); names without a shared layout are left alone.
    """
    if len(files) < 2:
        return
    tokens = [_DIGITS.split(case_name(f)) for f in files]
    layout = len(tokens[0])
    if any(len(t) != layout for t in tokens):
        return
    if any(t[k] != tokens[0][k] for t in tokens for k in range(0, layout, 2)):
        return
    varying = [k for k in range(1, layout, 2) if len({t[k] for t in tokens}) > 1]
    if not varying:
        return
    k = max(varying, key=lambda j: (len({t[j] for t in tokens}), j))
    numbers = [int(t[k]) for t in tokens]
    order = np.argsort(numbers, kind="stable")
    nums = [numbers[i] for i in order]
    names = [files[i].name for i in order]
    for a, b, na, nb in zip(nums, nums[1:], names, names[1:]):
        if a == b:
            raise InputError(files[0].parent, "one file per slice number", f"slice number {a} twice: {na} and {nb}")
    diffs = np.diff(nums)
    values, counts = np.unique(diffs, return_counts=True)
    step = int(values[np.argmax(counts)])
    for a, b, na, nb in zip(nums, nums[1:], names, names[1:]):
        if b - a != step:
            missing = list(range(a + step, b, step))[:5] if step > 0 and (b - a) % step == 0 else "?"
            raise InputError(files[0].parent, f"consecutive slice numbers (step {step})",
                             f"a gap between {na} and {nb}: slice number(s) {missing} missing")


class TiffSeriesReader(VolumeReader):
    """A folder of 2D TIFF z-slices (natural sort), read slab-wise with a thread pool.

    Every slice header is checked at open time (same 2D shape and dtype as the first slice,
    pixel data inside the file, no gap in the slice numbers) so a bad series fails before any
    output is written. Uncompressed slices are read as y-bands straight from the file
    (``pread``, no decoding, no memory map); compressed ones are decoded whole.
    """

    def __init__(self, folder: str | Path, spacing=None, workers: int = 2, check_numbering: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.path = Path(folder)
        if not self.path.is_dir():
            raise InputError(self.path, "a folder of TIFF z-slices", "no such folder")
        self.files = list_tiff_series(self.path)
        if check_numbering:
            check_series_numbering(self.files)
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="tiffslab")
        self.headers = list(self._pool.map(_tiff_slice_header, self.files))
        first = self.headers[0]
        for f, h in zip(self.files[1:], self.headers[1:]):
            if h["shape"] != first["shape"]:
                raise InputError(f, f"slice shape {first['shape']} like the first slice {self.files[0].name}",
                                 f"shape {h['shape']}")
            if h["dtype"] != first["dtype"]:
                raise InputError(f, f"dtype {first['dtype']} like the first slice {self.files[0].name}",
                                 f"dtype {h['dtype']}")
        self.shape = (len(self.files),) + first["shape"]
        self.dtype = first["dtype"]
        if spacing is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in spacing), "argument"
        else:
            self.spacing, self.spacing_source = first["spacing"]
        self.contiguous = all(h["contiguous"] for h in self.headers)
        self.z_chunk = 1
        self.row_chunk = 256 if self.contiguous else None

    def _where(self, z: int) -> str:
        return str(self.files[z])

    def _read_plane(self, z: int, dest: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
        import tifffile

        path, h = self.files[z], self.headers[z]
        X = self.shape[2]
        if h["contiguous"]:
            file_dtype = h["dtype"].newbyteorder(h["byteorder"])
            full_rows = x0 == 0 and x1 == X and file_dtype == dest.dtype and dest.flags.c_contiguous
            buf = dest if full_rows else np.empty((y1 - y0, X), file_dtype)
            want = buf.nbytes
            try:
                with open(path, "rb", buffering=0) as fh:
                    fh.seek(h["offset"] + y0 * X * file_dtype.itemsize)
                    got = fh.readinto(memoryview(buf).cast("B"))
            except OSError as exc:
                raise InputError(path, "a readable TIFF slice", f"{type(exc).__name__}: {exc}") from exc
            if got != want:
                raise InputError(path, f"{want} bytes of rows {y0}:{y1}", f"{got} bytes (file truncated while reading)")
            if not full_rows:
                dest[...] = buf[:, x0:x1]
            return
        try:
            arr = tifffile.imread(str(path))
        except Exception as exc:
            raise InputError(path, "a decodable TIFF slice", f"{type(exc).__name__}: {exc}") from exc
        if arr.shape != self.shape[1:]:
            raise InputError(path, f"slice shape {self.shape[1:]}", f"{arr.shape}")
        dest[...] = arr[y0:y1, x0:x1]

    def _read(self, z0, z1, y0, y1, x0, x1):
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.dtype)
        list(self._pool.map(lambda z: self._read_plane(z, out[z - z0], y0, y1, x0, x1), range(z0, z1)))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class TiffStackReader(VolumeReader):
    """A multi-page TIFF (z pages or an ImageJ hyperstack) read plane-wise, never whole:
    uncompressed contiguous data is read by offset, compressed pages are decoded one by one."""

    def __init__(self, path: str | Path, spacing=None):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(self.path))
            series = self._tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype)
            self._offset = series.dataoffset
            self._byteorder = self._tif.byteorder
            npages = len(series.pages)
            spacing_file = _tiff_spacing(self._tif)
        except Exception as exc:
            raise InputError(self.path, "a readable TIFF file", f"{type(exc).__name__}: {exc}") from exc
        axes = str(series.axes)
        if len(shape) == 2:
            shape = (1,) + shape
        elif len(shape) > 3 and axes.endswith("YX"):
            outer = [s for s in shape[:-2] if s != 1]
            shape = (tuple(outer) if outer else (1,)) + shape[-2:]
        if len(shape) != 3 or not axes.endswith("YX"):
            self._tif.close()
            raise InputError(self.path, "a 3D (z, y, x) single-channel TIFF stack",
                             f"series of shape {series.shape} (axes {axes})")
        self.shape = shape
        if spacing is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in spacing), "argument"
        else:
            self.spacing, self.spacing_source = spacing_file
        size = os.path.getsize(self.path)
        if self._offset is not None and self._offset + self.nbytes > size:
            self._tif.close()
            raise InputError(self.path, f"{self.nbytes} bytes of pixel data from offset {self._offset}",
                             f"a file of {size} bytes (truncated)")
        self._pagewise = self._offset is None and npages == shape[0]
        self._cache: np.ndarray | None = None
        self.z_chunk = 1
        self.row_chunk = 256 if self._offset is not None else None

    def _read(self, z0, z1, y0, y1, x0, x1):
        Z, Y, X = self.shape
        if self._offset is not None:
            file_dtype = self.dtype.newbyteorder(self._byteorder)
            out = np.empty((z1 - z0, y1 - y0, X), file_dtype)
            plane = Y * X * file_dtype.itemsize
            with open(self.path, "rb", buffering=0) as fh:
                for i, z in enumerate(range(z0, z1)):
                    fh.seek(self._offset + z * plane + y0 * X * file_dtype.itemsize)
                    got = fh.readinto(memoryview(out[i]).cast("B"))
                    if got != out[i].nbytes:
                        raise InputError(self.path, f"plane z={z} inside the file", "a truncated file")
            out = out[:, :, x0:x1]
            return np.ascontiguousarray(out, dtype=self.dtype)
        if self._pagewise:
            out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.dtype)
            for i, z in enumerate(range(z0, z1)):
                try:
                    page = self._tif.series[0].pages[z]
                    out[i] = page.asarray().reshape(Y, X)[y0:y1, x0:x1]
                except Exception as exc:
                    raise InputError(self.path, f"a decodable page {z}", f"{type(exc).__name__}: {exc}") from exc
            return out
        if self._cache is None:  # e.g. compressed ImageJ hyperstacks: no page per plane
            try:
                self._cache = self._tif.series[0].asarray().reshape(self.shape)
            except Exception as exc:
                raise InputError(self.path, "a decodable TIFF stack", f"{type(exc).__name__}: {exc}") from exc
        return np.array(self._cache[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        self._tif.close()
        self._cache = None


class NiftiReader(VolumeReader):
    """NIfTI read through nibabel's lazy ``dataobj`` (slabs along the file's k axis, which is
    our z), converted to (z, y, x) without reorientation like :func:`read_volume`."""

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
        if spacing is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in spacing), "argument"
        else:
            self.spacing, self.spacing_source = (float(zooms[2]), float(zooms[1]), float(zooms[0])), "file"
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


class SitkReader(VolumeReader):
    """MetaImage/NRRD via SimpleITK: header read up front, voxels loaded whole on first use
    (these come as test-sized patches; MHA has no cheap slab access when compressed)."""

    def __init__(self, path: str | Path, spacing=None):
        import SimpleITK as sitk

        self.path = Path(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(self.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(self.path, "a readable MetaImage/NRRD file", str(exc).strip().splitlines()[-1]) from exc
        size = reader.GetSize()
        if len(size) != 3 or reader.GetNumberOfComponents() != 1:
            raise InputError(self.path, "a 3D single-component image",
                             f"size {size} with {reader.GetNumberOfComponents()} components")
        self.shape = (int(size[2]), int(size[1]), int(size[0]))
        sx, sy, sz = reader.GetSpacing()
        if spacing is not None:
            self.spacing, self.spacing_source = tuple(float(s) for s in spacing), "argument"
        else:
            self.spacing, self.spacing_source = (float(sz), float(sy), float(sx)), "file"
        probe = sitk.Image(1, 1, 1, reader.GetPixelID())
        self.dtype = sitk.GetArrayViewFromImage(probe).dtype
        self._data: np.ndarray | None = None

    def _read(self, z0, z1, y0, y1, x0, x1):
        if self._data is None:
            self._data = _read_sitk(self.path).data
        return np.array(self._data[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        self._data = None


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
        lower = path.name.lower()
        if not path.exists():
            raise InputError(path, "an existing image file, TIFF folder or zarr store", "nothing at that path")
        if path.is_dir() and (lower.endswith(".zarr") or (path / ".zattrs").exists()
                              or (path / "zarr.json").exists() or (path / ".zarray").exists()):
            from selma3d.io.omezarr import ZarrReader

            reader = ZarrReader(path, level=level, workers=workers)
        elif path.is_dir():
            reader = TiffSeriesReader(path, workers=workers)
        elif lower.endswith(NIFTI_SUFFIXES):
            reader = NiftiReader(path)
        elif lower.endswith(MHA_SUFFIXES):
            reader = SitkReader(path)
        elif lower.endswith(TIFF_SUFFIXES):
            reader = TiffStackReader(path)
        else:
            raise InputError(path, "a .nii/.nii.gz/.mha/.tif file, a TIFF folder or a .zarr store",
                             f"suffix {''.join(path.suffixes) or '(none)'}")
    if spacing is not None:
        reader.spacing = tuple(float(s) for s in spacing)
        reader.spacing_source = "argument"
    return reader


def check_pair(image_path: str | Path, label_path: str | Path, atol: float = 1e-4) -> None:
    """Raise InputError unless an image and its label share shape and geometry.

    NIfTI pairs are compared by header (shape and affine, no voxel reading); other formats by
    shape and spacing.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    if image_path.name.lower().endswith(NIFTI_SUFFIXES) and label_path.name.lower().endswith(NIFTI_SUFFIXES):
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
        return
    with open_reader(image_path) as a, open_reader(label_path) as b:
        if a.shape != b.shape:
            raise InputError(label_path, f"shape {a.shape} (z, y, x) like its image {image_path.name}", f"shape {b.shape}")
        if not np.allclose(a.spacing, b.spacing, rtol=1e-4):
            raise InputError(label_path, f"spacing {a.spacing} like its image {image_path.name}", f"spacing {b.spacing}")
