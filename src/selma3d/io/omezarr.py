"""Zarr and OME-Zarr (NGFF) stores: the canonical on-disk form of large volumes.

Every volume the pipeline ingests becomes an OME-Zarr image (a zarr group whose array ``0``
is (z, y, x), chunked, Blosc-compressed), and a downsampled pyramid is the same thing with
more levels. One layout means one reader (:class:`ZarrReader`) and that napari (with
napari-ome-zarr) opens every intermediate. NGFF 0.5 (zarr v3) is the default; 0.4 (zarr v2)
is available for older viewers. Plain zarr arrays with a ``spacing_um`` attribute are read too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.io.volume import ZARR_SUFFIXES, Volume, VolumeReader, case_name

AXES = ("z", "y", "x")
NGFF_VERSIONS = ("0.4", "0.5")


def is_zarr_store(path: str | Path) -> bool:
    """A folder named ``*.zarr`` or holding zarr v2/v3 metadata (group or array)."""
    path = Path(path)
    return path.is_dir() and (path.name.lower().endswith(ZARR_SUFFIXES) or any(
        (path / name).exists() for name in ("zarr.json", ".zattrs", ".zgroup", ".zarray")))


def blosc_codec(compressor: str = "lz4", clevel: int = 1, zarr_format: int = 3):
    """The compressor for ``zarr.create_array(compressors=...)``: Blosc ``lz4``/``zstd`` with
    byte shuffle (fast enough to keep up with the disk on one core), or ``"none"``."""
    name = (compressor or "none").lower()
    if name == "none":
        return None
    if name not in ("lz4", "lz4hc", "zstd", "blosclz", "zlib"):
        raise ValueError(f"compressor: expected lz4, zstd, blosclz, zlib or none, found {compressor!r}")
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(cname=name, clevel=int(clevel), shuffle=numcodecs.Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=name, clevel=int(clevel), shuffle="shuffle")


def ngff_multiscales(scales: Sequence[Sequence[float]], translations: Sequence[Sequence[float]] | None = None,
                     name: str = "image", version: str = "0.5", method: str | None = None,
                     method_metadata: dict | None = None) -> dict:
    """The multiscales attribute for a (z, y, x) image in micrometres.

    Returns the dict to merge into the group attributes: ``{"ome": {...}}`` for 0.5,
    ``{"multiscales": [...]}`` for 0.4.
    """
    if version not in NGFF_VERSIONS:
        raise ValueError(f"ngff_version: expected one of {NGFF_VERSIONS}, found {version!r}")
    datasets = []
    for level, scale in enumerate(scales):
        transforms = [{"type": "scale", "scale": [float(s) for s in scale]}]
        if translations is not None:
            transforms.append({"type": "translation", "translation": [float(t) for t in translations[level]]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    ms = {
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in AXES],
        "datasets": datasets,
    }
    if method:
        ms["type"] = method
    if method_metadata:
        ms["metadata"] = method_metadata
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **ms}]}
    return {"ome": {"version": "0.5", "multiscales": [ms]}}


def create_ome_zarr(path: str | Path, shapes: Sequence[Sequence[int]], dtype, chunks: Sequence[int],
                    scales: Sequence[Sequence[float]], translations: Sequence[Sequence[float]] | None = None,
                    *, name: str = "image", compressor: str = "lz4", clevel: int = 1, ngff_version: str = "0.5",
                    method: str | None = None, method_metadata: dict | None = None,
                    attributes: dict | None = None) -> list:
    """Create an empty OME-Zarr image with one array per level; returns the zarr arrays.

    Chunks are clipped to each level's shape. Write into a temporary path (see
    :func:`selma3d.core.atomic.atomic_path`) so a failure leaves nothing that looks complete.
    """
    import zarr

    zarr_format = 2 if ngff_version == "0.4" else 3
    attrs = dict(attributes or {})
    attrs.update(ngff_multiscales(scales, translations, name, ngff_version, method, method_metadata))
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format, attributes=attrs)
    arrays = []
    for level, shape in enumerate(shapes):
        shape = tuple(int(s) for s in shape)
        ch = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, shape))
        kwargs = dict(name=str(level), shape=shape, chunks=ch, dtype=np.dtype(dtype), fill_value=0,
                      compressors=blosc_codec(compressor, clevel, zarr_format))
        if zarr_format == 3:
            kwargs["dimension_names"] = AXES
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        arrays.append(group.create_array(**kwargs))
    return arrays


def _multiscales(attrs: dict) -> list | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        return attrs["ome"].get("multiscales")
    return attrs.get("multiscales")


def _transform(transforms: list, kind: str) -> list[float] | None:
    for t in transforms or []:
        if t.get("type") == kind:
            return [float(v) for v in t[kind]]
    return None


def create_patch_array(path: str | Path, n_max: int, patch_size: Sequence[int], dtype, *,
                       compressor: str = "zstd", clevel: int = 3, attributes: dict | None = None):
    """An empty (N, pz, py, px) zarr v3 array with one chunk per patch (shrink it with
    ``resize`` once the number kept is known; unwritten chunks cost nothing)."""
    import zarr

    size = tuple(int(s) for s in patch_size)
    return zarr.create_array(str(path), shape=(int(n_max),) + size, chunks=(1,) + size, dtype=np.dtype(dtype),
                             fill_value=0, compressors=blosc_codec(compressor, clevel),
                             dimension_names=("patch",) + AXES, attributes=attributes or {})


def open_patch_array(path: str | Path):
    """A patch store written by :func:`create_patch_array`, read-only."""
    import zarr

    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as exc:
        raise InputError(path, "a patch store (zarr array N x pz x py x px)", f"{type(exc).__name__}: {exc}") from exc
    if arr.ndim != 4:
        raise InputError(path, "a 4D patch array (N, z, y, x)", f"shape {arr.shape}")
    return arr


class ChunkIO:
    """Whole-chunk reads and writes of a local zarr v3 array, done with numcodecs Blosc in a
    thread pool and plain file I/O.

    The bytes on disk are what zarr itself writes (a Blosc frame per full-size chunk under the
    array's chunk keys), and zarr reads them back (tests check both directions). It exists
    because zarr's async codec pipeline ran at about half the speed of the same Blosc calls on
    this 2-core machine for large aligned blocks; anything unaligned goes through zarr.
    """

    def __init__(self, array, root: Path, workers: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        import numcodecs

        self.array = array
        meta = array.metadata
        self.dir = root / array.path if array.path else root
        self.chunks = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.fill = self.dtype.type(array.fill_value)
        blosc = meta.codecs[1] if len(meta.codecs) == 2 else None
        if blosc is not None:
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(getattr(blosc.shuffle, "value", blosc.shuffle))]
            self.codec = numcodecs.Blosc(cname=str(getattr(blosc.cname, "value", blosc.cname)), clevel=int(blosc.clevel),
                                         shuffle=shuffle, blocksize=int(blosc.blocksize or 0))
        else:
            self.codec = None
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="chunkio")

    @classmethod
    def for_array(cls, array, workers: int = 2) -> "ChunkIO | None":
        """A ChunkIO when the array is a plain local zarr v3 array with [bytes(, blosc)] codecs
        in C order, little-endian; otherwise None (use zarr)."""
        try:
            from zarr.codecs import BloscCodec, BytesCodec
            from zarr.core.metadata import ArrayV3Metadata
            from zarr.storage import LocalStore

            meta = array.metadata
            store = array.store_path.store
            if not isinstance(meta, ArrayV3Metadata) or not isinstance(store, LocalStore):
                return None
            codecs = meta.codecs
            if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
                return None
            if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
                return None
            endian = getattr(codecs[0].endian, "value", codecs[0].endian)
            if endian not in (None, "little") or np.dtype(array.dtype).byteorder == ">":
                return None
            if getattr(meta.chunk_grid, "chunk_shape", None) is None or array.order != "C":
                return None
            return cls(array, Path(store.root), workers)
        except Exception:
            return None

    def aligned(self, starts: Sequence[int], stops: Sequence[int]) -> bool:
        return all(a % c == 0 and (b % c == 0 or b == n)
                   for a, b, c, n in zip(starts, stops, self.chunks, self.shape))

    def _keys(self, starts, stops):
        import itertools

        return list(itertools.product(*[range(a // c, -(-b // c)) for a, b, c in zip(starts, stops, self.chunks)]))

    def _path(self, key) -> Path:
        return self.dir / self.array.metadata.encode_chunk_key(key)

    def write(self, starts: Sequence[int], data: np.ndarray) -> None:
        """Write ``data`` whose origin ``starts`` and extent are on the chunk grid."""
        stops = [a + n for a, n in zip(starts, data.shape)]
        if not self.aligned(starts, stops):
            raise ValueError(f"block at {tuple(starts)} of shape {data.shape} is not chunk-aligned ({self.chunks})")

        def put(key):
            lo = [k * c for k, c in zip(key, self.chunks)]
            part = data[tuple(slice(l - a, min(l + c, b) - a) for l, a, b, c in zip(lo, starts, stops, self.chunks))]
            if part.shape != self.chunks:  # edge chunks are stored full-size, padded with the fill value
                full = np.full(self.chunks, self.fill, self.dtype)
                full[tuple(slice(0, n) for n in part.shape)] = part
                part = full
            buf = np.ascontiguousarray(part, dtype=self.dtype.newbyteorder("<"))
            blob = self.codec.encode(buf) if self.codec is not None else buf.tobytes()
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(blob)

        list(self._pool.map(put, self._keys(starts, stops)))

    def read(self, starts: Sequence[int], stops: Sequence[int]) -> np.ndarray:
        """Read the chunk-aligned box ``starts:stops``; missing chunks read as the fill value."""
        out = np.empty([b - a for a, b in zip(starts, stops)], self.dtype)

        def get(key):
            lo = [k * c for k, c in zip(key, self.chunks)]
            dst = tuple(slice(l - a, min(l + c, b) - a) for l, a, b, c in zip(lo, starts, stops, self.chunks))
            try:
                with open(self._path(key), "rb") as fh:
                    blob = fh.read()
            except FileNotFoundError:
                out[dst] = self.fill
                return
            chunk = np.empty(self.chunks, self.dtype.newbyteorder("<"))
            if self.codec is not None:
                self.codec.decode(blob, out=chunk)
            else:
                chunk.reshape(-1).view(np.uint8)[:] = np.frombuffer(blob, np.uint8)
            out[dst] = chunk[tuple(slice(0, s.stop - s.start) for s in dst)]

        list(self._pool.map(get, self._keys(starts, stops)))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def write_block(array, fast: ChunkIO | None, starts: Sequence[int], data: np.ndarray) -> None:
    """``array[starts : starts + data.shape] = data`` through ChunkIO when aligned."""
    stops = [a + n for a, n in zip(starts, data.shape)]
    if fast is not None and fast.aligned(starts, stops):
        fast.write(starts, data)
    else:
        array[tuple(slice(a, b) for a, b in zip(starts, stops))] = data


class ZarrReader(VolumeReader):
    """One level of an OME-Zarr image (or a plain zarr array) behind the reader interface.

    Reads are cheapest aligned to the chunk grid (``z_chunk``, ``row_chunk``).
    """

    def __init__(self, path: str | Path, level: int = 0, spacing=None, workers: int = 2):
        import zarr

        self.path = Path(path)
        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as exc:
            raise InputError(self.path, "a readable zarr store", f"{type(exc).__name__}: {exc}") from exc
        self.level = int(level)
        self.translation = (0.0, 0.0, 0.0)
        self.attrs = dict(node.attrs)
        self.levels = 1
        file_spacing = None
        if isinstance(node, zarr.Array):
            if self.level != 0:
                raise InputError(self.path, "level 0 (a plain zarr array has one level)", f"level {self.level}")
            self.array = node
            if "spacing_um" in self.attrs:
                file_spacing = tuple(float(s) for s in self.attrs["spacing_um"])
        else:
            ms = _multiscales(self.attrs)
            if not ms:
                raise InputError(self.path, "an OME-Zarr image (multiscales metadata) or a zarr array",
                                 f"a group with attributes {sorted(self.attrs)}")
            datasets = ms[0]["datasets"]
            self.levels = len(datasets)
            if not 0 <= self.level < len(datasets):
                raise InputError(self.path, f"a level in 0..{len(datasets) - 1}", f"level {self.level}")
            axes = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", AXES)]
            if [a.lower() for a in axes] != list(AXES):
                raise InputError(self.path, f"axes {list(AXES)}", f"axes {axes}")
            ds = datasets[self.level]
            self.array = node[ds["path"]]
            scale = _transform(ds["coordinateTransformations"], "scale")
            file_spacing = tuple(scale) if scale else None
            tr = _transform(ds["coordinateTransformations"], "translation")
            if tr:
                self.translation = tuple(tr)
        if self.array.ndim != 3:
            raise InputError(self.path, "a 3D (z, y, x) array", f"shape {self.array.shape}")
        self.shape = tuple(int(s) for s in self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        self.set_spacing(spacing, file_spacing)
        self.chunks = tuple(int(c) for c in self.array.chunks)
        self.z_chunk, self.row_chunk = self.chunks[0], self.chunks[1]
        self._fast = ChunkIO.for_array(self.array, workers)

    def _read(self, z0, z1, y0, y1, x0, x1):
        if self._fast is not None and self._fast.aligned((z0, y0, x0), (z1, y1, x1)):
            return self._fast.read((z0, y0, x0), (z1, y1, x1))
        return np.asarray(self.array[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()


def read_zarr_volume(path: str | Path, level: int = 0) -> Volume:
    """A whole level of an OME-Zarr image (or a plain zarr array) in memory."""
    with ZarrReader(path, level=level) as reader:
        return reader.read_volume(format="zarr", level=level, levels=reader.levels, translation=reader.translation)


def write_zarr_volume(path: str | Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0),
                      chunks: Sequence[int] = (64, 256, 256), compressor: str = "lz4", clevel: int = 1,
                      ngff_version: str = "0.5", name: str | None = None) -> Path:
    """Write an in-memory (z, y, x) array as a one-level OME-Zarr image, atomically."""
    path = Path(path)
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D (z, y, x) array, found shape {data.shape}")
    with atomic_path(path) as tmp:
        (arr,) = create_ome_zarr(tmp, [data.shape], data.dtype, chunks, [spacing], None,
                                 name=name or case_name(path), compressor=compressor, clevel=clevel,
                                 ngff_version=ngff_version)
        arr[...] = data
    return path


@contextlib.contextmanager
def zarr_workers(workers: int) -> Iterator[None]:
    """Limit zarr's (de)compression threads for the duration of a block."""
    import zarr

    with zarr.config.set({"threading.max_workers": max(1, int(workers))}):
        yield
