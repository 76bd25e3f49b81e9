"""TIFF: folders of 2D z-slices (one file per plane, the usual light-sheet export) and
multi-page TIFF stacks, read plane-wise through :class:`TiffSeriesReader` /
:class:`TiffStackReader`; written with :func:`write_tiff_series` / :func:`write_tiff_stack`.

A slice folder is validated as it opens (every slice header, the slice numbering, shapes and
dtypes) so a bad series fails before any output is written. TIFF keeps no z spacing of its own:
y/x come from the resolution tags (or ImageJ metadata), z from ImageJ's ``spacing`` if present.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.io.volume import TIFF_SUFFIXES, SpacingSource, VolumeReader, case_name, natural_key, split_digits


def list_tiff_series(folder: str | Path) -> list[Path]:
    """The TIFF slices of a folder in z order (natural sort of the file names)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.name.lower().endswith(TIFF_SUFFIXES) and not p.name.startswith(".")]
    if not files:
        raise InputError(folder, "a folder of .tif/.tiff z-slices", "no TIFF files")
    return sorted(files, key=lambda p: natural_key(p.name))


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
    tokens = [split_digits(case_name(f)) for f in files]
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
        self.set_spacing(spacing, *first["spacing"])
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
        self.set_spacing(spacing, *spacing_file)
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


def write_tiff_stack(path: str | Path, data: np.ndarray) -> Path:
    """Write (z, y, x) as one multi-page TIFF, atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), np.asarray(data))
    return Path(path)
